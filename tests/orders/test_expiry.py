"""The expiry sweep, its beat task and `manage.py expire_orders`."""

from __future__ import annotations

from datetime import timedelta
from io import StringIO

import pytest
from django.core.management import call_command
from django.utils import timezone
from freezegun import freeze_time

from orders import errors, expiry, services, tasks
from orders.models import Order, OrderStatus
from outbox.models import OutboxEvent
from tests.orders.factories import OrderFactory, overdue_orders_bulk

pytestmark = pytest.mark.django_db


def expired_events() -> list[OutboxEvent]:
    return list(OutboxEvent.objects.filter(type="order.expired"))


def test_sweep_expires_only_due_pending_orders():
    with freeze_time("2026-02-01 10:00:00"):
        due = OrderFactory(expiration_time=timezone.now() - timedelta(seconds=1))
        due_exactly = OrderFactory(expiration_time=timezone.now())
        not_yet = OrderFactory(expiration_time=timezone.now() + timedelta(seconds=1))
        paid = OrderFactory(status=OrderStatus.PAID, expiration_time=timezone.now() - timedelta(hours=1))

        expired = expiry.order_expire_due()

    assert expired == 2
    statuses = {o.pk: o.status for o in Order.objects.all()}
    assert statuses == {
        due.pk: "expired",
        due_exactly.pk: "expired",
        not_yet.pk: "pending_payment",
        paid.pk: "paid",
    }
    events = expired_events()
    assert sorted(e.aggregateid for e in events) == sorted([str(due.pk), str(due_exactly.pk)])
    payload = next(e.payload for e in events if e.aggregateid == str(due.pk))
    assert payload["status"] == "expired"
    assert payload["total_amount"] == "20.00"
    assert payload["currency"] == "USD"
    assert payload["order_id"] == str(due.pk)


def test_sweep_loops_over_batches_until_none_is_due():
    overdue_orders_bulk(25)
    progress: list[tuple[int, int]] = []

    expired = expiry.order_expire_due(batch_size=10, progress=lambda b, t: progress.append((b, t)))

    assert expired == 25
    assert progress == [(10, 10), (10, 20), (5, 25)]
    assert len(expired_events()) == 25
    assert expiry.order_expire_due() == 0  # a second run finds nothing and writes nothing
    assert len(expired_events()) == 25


def test_beat_task_runs_the_sweep():
    overdue_orders_bulk(3)

    assert tasks.orders_expire_due.apply().get() == 3
    assert Order.objects.filter(status=OrderStatus.EXPIRED).count() == 3


def test_expire_orders_dry_run_changes_nothing():
    overdue_orders_bulk(4)
    OrderFactory()  # not due
    out = StringIO()

    call_command("expire_orders", "--dry-run", stdout=out)

    assert "4 pending order(s)" in out.getvalue()
    assert Order.objects.filter(status=OrderStatus.PENDING_PAYMENT).count() == 5
    assert expired_events() == []


def test_expire_orders_prints_progress_and_expires():
    overdue_orders_bulk(7)
    out = StringIO()

    call_command("expire_orders", "--batch-size", "3", stdout=out)

    text = out.getvalue()
    assert "expired 3 order(s) so far" in text
    assert "expired 6 order(s) so far" in text
    assert "Expired 7 order(s)" in text
    assert Order.objects.filter(status=OrderStatus.EXPIRED).count() == 7
    assert len(expired_events()) == 7


def test_admin_actions_go_through_the_services(admin_client):
    pending, other, extendable = OrderFactory(), OrderFactory(status=OrderStatus.PAID), OrderFactory()
    before = extendable.expiration_time

    admin_client.post(
        "/admin/orders/order/",
        {"action": "expire_orders", "_selected_action": [str(pending.pk), str(other.pk)]},
    )
    admin_client.post(
        "/admin/orders/order/", {"action": "extend_expiration", "_selected_action": [str(extendable.pk)]}
    )

    pending.refresh_from_db()
    other.refresh_from_db()
    extendable.refresh_from_db()
    assert pending.status == OrderStatus.EXPIRED
    assert other.status == OrderStatus.PAID  # refused, not forced
    assert extendable.expiration_time == before + timedelta(minutes=15)
    assert [e.aggregateid for e in expired_events()] == [str(pending.pk)]

    admin_client.post(
        "/admin/orders/order/", {"action": "cancel_orders", "_selected_action": [str(extendable.pk)]}
    )
    extendable.refresh_from_db()
    assert extendable.status == OrderStatus.CANCELLED


def test_admin_list_search_and_detail(admin_client):
    order = OrderFactory(user_id="alice")

    assert admin_client.get("/admin/orders/order/?q=alice").status_code == 200
    assert (
        admin_client.get("/admin/orders/order/?q=not-a-uuid&status__exact=pending_payment").status_code == 200
    )
    detail = admin_client.get(f"/admin/orders/order/{order.pk}/change/")
    assert detail.status_code == 200
    assert b"Widget" in detail.content  # the items inline


def test_extend_overdue_order_is_refused():
    order = OrderFactory(expiration_time=timezone.now() - timedelta(seconds=1))

    with pytest.raises(errors.OrderNotPending):
        services.order_extend_expiration(order_id=order.pk)


def test_metrics_count_expired_orders_and_payment_outcomes(django_capture_on_commit_callbacks, client):
    from prometheus_client import REGISTRY

    def sample(name: str, **labels: str) -> float:
        return REGISTRY.get_sample_value(name, labels) or 0.0

    before = sample("gatehouse_orders_expired_total", source="sweep")
    overdue_orders_bulk(3)

    with django_capture_on_commit_callbacks(execute=True):
        expiry.order_expire_due()

    assert sample("gatehouse_orders_expired_total", source="sweep") == before + 3
    assert b"gatehouse_orders_expired_total" in client.get("/metrics").content
