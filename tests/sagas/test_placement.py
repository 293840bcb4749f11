"""The order placement saga against a real (fake) inventory service over HTTP, on PostgreSQL;
steps run in this process through the same services the Celery tasks call."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from orders.expiry import order_expire_due
from orders.models import Order, OrderStatus
from orders.services import order_cancel
from outbox.models import OutboxEvent
from sagas.models import SagaStatus, StepStatus
from tests.sagas.conftest import drive, pay, place_order, saga_of, steps_of

pytestmark = pytest.mark.django_db


def saga_events(saga) -> list[str]:
    return list(
        OutboxEvent.objects.filter(aggregateid=str(saga.id))
        .order_by("sequence")
        .values_list("type", flat=True)
    )


def order_events(order) -> list[str]:
    return list(
        OutboxEvent.objects.filter(aggregateid=str(order.id))
        .order_by("sequence")
        .values_list("type", flat=True)
    )


def test_happy_path_reserves_then_confirms_and_completes(inventory):
    # given an order whose saga reserved stock
    order = place_order()
    saga = saga_of(order)
    assert saga.status == SagaStatus.RUNNING and saga.reference == str(order.id)
    drive()
    assert inventory.effects["reserve", str(saga.id)] == 1
    assert inventory.bodies[0] == {
        "reservation_id": str(saga.id),
        "order_id": str(order.id),
        "items": [{"sku": "SKU-1", "quantity": 2}],
    }
    assert inventory.headers[0] == {"operation": "reserve", "key": f"{saga.id}:reserve"}
    saga.refresh_from_db()
    assert saga.current_step == "await_payment"
    assert saga.deadline == order.expiration_time
    # when the payment arrives
    pay(order)
    drive()
    # then the reservation is confirmed and the saga completed
    saga.refresh_from_db()
    assert saga.status == SagaStatus.COMPLETED and saga.finished_at
    assert inventory.reserved[str(saga.id)] == "confirmed"
    assert {"operation": "confirm", "key": f"{saga.id}:confirm"} in inventory.headers
    steps = steps_of(saga)
    assert [
        steps[n, "action"].status for n in ("reserve_inventory", "await_payment", "confirm_inventory")
    ] == [StepStatus.SUCCEEDED] * 3
    assert saga_events(saga) == ["saga.started", "saga.completed"]


@pytest.mark.parametrize("mode", ["reject", "invalid"])
def test_rejection_cancels_the_order_and_releases_nothing(inventory, mode):
    inventory.modes["reserve"] = mode
    order = place_order()
    saga = saga_of(order)
    drive()
    saga.refresh_from_db()
    order.refresh_from_db()
    assert order.status == OrderStatus.CANCELLED
    assert saga.status == SagaStatus.COMPENSATED and saga.reason == "inventory_rejected"
    cancelled = OutboxEvent.objects.get(aggregateid=str(order.id), type="order.cancelled")
    assert cancelled.payload["reason"] == "inventory_rejected"
    assert inventory.requests["reserve", str(saga.id)] == 1  # a rejection is not retried
    assert inventory.requests["release", str(saga.id)] == 0
    assert saga_events(saga) == ["saga.started", "saga.compensated"]


def reserved_order(inventory):
    order = place_order()
    drive()
    saga = saga_of(order)
    assert inventory.reserved[str(saga.id)] == "held"
    return order, saga


def test_payment_failure_releases_once(inventory):
    order, saga = reserved_order(inventory)
    pay(order, type="payment.failed", event_id="f1")
    pay(order, type="payment.failed", event_id="f1")  # redelivered
    drive()
    saga.refresh_from_db()
    assert saga.status == SagaStatus.COMPENSATED and saga.reason == "payment_failed"
    assert inventory.effects["release", str(saga.id)] == 1
    assert inventory.requests["release", str(saga.id)] == 1
    assert str(saga.id) not in inventory.reserved


def test_cancel_releases_once(inventory):
    order, saga = reserved_order(inventory)
    order_cancel(order_id=order.id)
    drive()
    saga.refresh_from_db()
    assert saga.status == SagaStatus.COMPENSATED and saga.reason == "order_cancelled"
    assert inventory.requests["release", str(saga.id)] == 1


def test_expiry_sweep_releases_once_and_a_late_payment_keeps_its_refund_without_reserving(inventory):
    order, saga = reserved_order(inventory)
    later = order.expiration_time + timedelta(seconds=1)
    assert order_expire_due(now=later) == 1
    assert order_expire_due(now=later) == 0
    drive(now=later + timedelta(seconds=1))
    saga.refresh_from_db()
    assert saga.status == SagaStatus.COMPENSATED and saga.reason == "order_expired"
    assert inventory.requests["release", str(saga.id)] == 1
    # a payment after the expiry asks for a refund and never reserves again
    result = pay(order, event_id="late", now=later)
    drive(now=later + timedelta(seconds=1))
    assert result.outcome == "payment_after_expiry"
    assert "order.payment_after_expiry" in order_events(order)
    assert inventory.requests["reserve", str(saga.id)] == 1
    assert inventory.requests["release", str(saga.id)] == 1


def test_the_same_payment_twice_confirms_once(inventory):
    order, saga = reserved_order(inventory)
    pay(order, event_id="p1")
    pay(order, event_id="p1")
    drive()
    pay(order, event_id="p1")
    drive()
    saga.refresh_from_db()
    assert saga.status == SagaStatus.COMPLETED
    assert inventory.requests["confirm", str(saga.id)] == 1
    assert inventory.requests["release", str(saga.id)] == 0


def test_inventory_down_retries_with_backoff_then_cancels(inventory):
    inventory.modes["reserve"] = "fail"
    order = place_order()
    saga = saga_of(order)
    drive(now=timezone.now())  # one attempt: the retry waits for its backoff
    step = steps_of(saga)["reserve_inventory", "action"]
    assert step.status == StepStatus.PENDING and step.attempts == 1
    assert step.not_before > timezone.now() - timedelta(seconds=1)
    assert "503" in step.last_error
    drive()  # the clock past every backoff
    saga.refresh_from_db()
    order.refresh_from_db()
    assert inventory.requests["reserve", str(saga.id)] == 3  # SAGA_STEP_MAX_ATTEMPTS in these tests
    assert saga.status == SagaStatus.COMPENSATED and saga.reason == "reserve_inventory_failed"
    assert order.status == OrderStatus.CANCELLED
    assert OutboxEvent.objects.get(aggregateid=str(order.id), type="order.cancelled").payload["reason"] == (
        "reserve_inventory_failed"
    )


def test_refused_connection_is_retried(inventory, settings):
    from gateway.models import ServiceTarget

    ServiceTarget.objects.update(url="http://127.0.0.1:9")  # nothing listens on the discard port
    order = place_order()
    drive()
    saga = saga_of(order)
    saga.refresh_from_db()
    assert saga.status == SagaStatus.COMPENSATED
    assert steps_of(saga)["reserve_inventory", "action"].attempts == settings.SAGA_STEP_MAX_ATTEMPTS


def test_without_inventory_service_the_inventory_steps_are_skipped(settings):
    settings.INVENTORY_SERVICE = ""
    order = place_order()
    drive()
    pay(order)
    drive()
    saga = saga_of(order)
    saga.refresh_from_db()
    steps = steps_of(saga)
    assert saga.status == SagaStatus.COMPLETED
    assert steps["reserve_inventory", "action"].status == StepStatus.SKIPPED
    assert steps["confirm_inventory", "action"].status == StepStatus.SKIPPED
    assert Order.objects.get(pk=order.pk).status == OrderStatus.PAID


def test_a_compensation_that_keeps_failing_fails_the_saga_and_can_be_resumed(inventory):
    from django.core.management import call_command

    order, saga = reserved_order(inventory)
    inventory.modes["release"] = "fail"
    order_cancel(order_id=order.id)
    drive()
    saga.refresh_from_db()
    assert saga.status == SagaStatus.FAILED and saga.current_step == "release_inventory"
    assert saga_events(saga)[-1] == "saga.failed"
    assert steps_of(saga)["release_inventory", "compensation"].attempts == 3
    # resumed once the inventory is back
    inventory.modes["release"] = "accept"
    call_command("saga_resume", str(saga.id))
    drive()
    saga.refresh_from_db()
    assert saga.status == SagaStatus.COMPENSATED
    assert inventory.effects["release", str(saga.id)] == 1
    assert saga_events(saga)[-1] == "saga.compensated"


def test_a_payment_during_the_reservation_is_not_lost(inventory):
    # given a payment that arrives before the reservation step has run
    order = place_order()
    pay(order)
    # when the reservation completes
    drive()
    # then the saga does not wait for a payment already made: confirmed and completed
    saga = saga_of(order)
    saga.refresh_from_db()
    assert saga.status == SagaStatus.COMPLETED
    assert inventory.reserved[str(saga.id)] == "confirmed"


def test_a_target_change_reaches_the_next_step_although_targets_are_cached(
    inventory, http_server_factory, django_capture_on_commit_callbacks
):
    from gateway.models import Service
    from gateway.services.routes import service_targets_set
    from tests.sagas.conftest import FakeInventory

    # given a saga whose reservation went to the first target (its targets now cached)
    order = place_order()
    drive()
    saga = saga_of(order)
    assert inventory.effects["reserve", str(saga.id)] == 1
    # when staff move the service to another target
    other = FakeInventory()
    other.reserved[str(saga.id)] = "held"
    server = http_server_factory(other)
    with django_capture_on_commit_callbacks(execute=True):  # the routes invalidation, on commit
        service_targets_set(service=Service.objects.get(name=inventory_name()), targets=[(server.url, True)])
    pay(order)
    drive()
    # then the confirm goes to the new target at once
    assert other.effects["confirm", str(saga.id)] == 1
    assert inventory.requests["confirm", str(saga.id)] == 0


def inventory_name() -> str:
    from tests.sagas.conftest import INVENTORY

    return INVENTORY
