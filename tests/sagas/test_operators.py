"""Operators' view of sagas: admin (filters, timeline, actions, order link), commands, metrics."""

from __future__ import annotations

import uuid

import pytest
from django.core.management import CommandError, call_command

from common.metrics import render_metrics
from orders.services import order_cancel
from sagas.models import SagaStatus
from tests.sagas.conftest import drive, place_order, saga_of

pytestmark = pytest.mark.django_db


@pytest.fixture
def failed_saga(inventory):
    order = place_order()
    drive()
    inventory.modes["release"] = "fail"
    order_cancel(order_id=order.id)
    drive()
    saga = saga_of(order)
    assert saga.status == SagaStatus.FAILED
    return order, saga


def test_a_failed_saga_is_visible_in_admin_with_its_timeline(admin_client, failed_saga):
    order, saga = failed_saga
    listing = admin_client.get(
        "/admin/sagas/sagainstance/", {"status__exact": "failed", "saga_type": "order.placement"}
    )
    assert listing.status_code == 200
    assert str(saga.id)[:8] in listing.content.decode()
    page = admin_client.get(f"/admin/sagas/sagainstance/{saga.id}/change/").content.decode()
    for text in ("reserve_inventory", "await_payment", "release_inventory", "inventory answered 503", " ms"):
        assert text in page
    assert f"/admin/orders/order/{order.id}/change/" in page
    order_page = admin_client.get(f"/admin/orders/order/{order.id}/change/").content.decode()
    assert f"/admin/sagas/sagainstance/{saga.id}/change/" in order_page


def test_admin_resume_action_retries_the_compensation(admin_client, failed_saga, inventory):
    _, saga = failed_saga
    inventory.modes["release"] = "accept"
    response = admin_client.post(
        "/admin/sagas/sagainstance/", {"action": "resume_sagas", "_selected_action": [str(saga.id)]}
    )
    assert response.status_code == 302
    drive()
    saga.refresh_from_db()
    assert saga.status == SagaStatus.COMPENSATED


def test_admin_compensate_action_releases_a_running_saga(admin_client, inventory):
    order = place_order()
    drive()
    saga = saga_of(order)
    admin_client.post(
        "/admin/sagas/sagainstance/", {"action": "compensate_sagas", "_selected_action": [str(saga.id)]}
    )
    drive()
    saga.refresh_from_db()
    order.refresh_from_db()
    assert saga.status == SagaStatus.COMPENSATED and saga.reason == "operator"
    assert order.status == "cancelled"
    assert inventory.effects["release", str(saga.id)] == 1


def test_failed_sagas_are_counted_as_stuck_on_metrics(failed_saga):
    body = render_metrics()[0].decode()
    assert 'gatehouse_sagas_stuck{saga_type="order.placement"} 1.0' in body
    assert 'gatehouse_sagas_by_status{saga_type="order.placement",status="failed"} 1.0' in body
    assert "gatehouse_saga_step_duration_seconds_bucket" in body


def test_saga_list_stuck_shows_the_failed_saga_only(failed_saga, inventory, capsys):
    _, saga = failed_saga
    healthy = saga_of(place_order())
    call_command("saga_list", "--stuck")
    out = capsys.readouterr().out
    assert str(saga.id) in out and str(healthy.id) not in out and "1 saga(s)" in out
    call_command("saga_list")
    assert str(healthy.id) in capsys.readouterr().out


def test_commands_refuse_bad_ids_without_a_traceback(capsys):
    for command in ("saga_resume", "saga_compensate"):
        with pytest.raises(CommandError, match="not a saga id"):
            call_command(command, "nope")
        with pytest.raises(CommandError, match="does not exist"):
            call_command(command, str(uuid.uuid4()))


def test_saga_compensate_refuses_a_finished_saga(failed_saga):
    _, saga = failed_saga
    with pytest.raises(CommandError, match="only a running saga"):
        call_command("saga_compensate", str(saga.id))


def test_saga_compensate_command(inventory, capsys):
    order = place_order()
    drive()
    saga = saga_of(order)
    call_command("saga_compensate", str(saga.id))
    assert "compensating" in capsys.readouterr().out
    drive()
    saga.refresh_from_db()
    assert saga.status == SagaStatus.COMPENSATED
