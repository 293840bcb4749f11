"""When the placement saga gives up after the payment was taken (confirm_inventory exhausted its
attempts, or an operator compensates a paid order's saga), the customer must not keep paying for
stock that was never confirmed: the reservation is released, the order is cancelled and the
payment is refunded through the same refund request a payment for a cancelled order gets (the
same event id, so a redelivered payment never asks twice). On PostgreSQL, against the fake
inventory service over HTTP."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.core.management import call_command
from django.utils import timezone
from freezegun import freeze_time

from orders import events
from orders.models import Order, OrderStatus
from orders.payments import PAYMENT_CONSUMER_GROUP, processed_events_purge
from outbox.models import OutboxEvent
from sagas.models import SagaInstance, SagaStatus, StepStatus
from tests.sagas.conftest import drive, pay, place_order, saga_of, steps_of

pytestmark = pytest.mark.django_db

CONFIRM_FAILED = "confirm_inventory_failed"


def order_events(order, type: str | None = None) -> list[OutboxEvent]:
    qs = OutboxEvent.objects.filter(aggregatetype="order", aggregateid=str(order.id))
    if type:
        qs = qs.filter(type=type)
    return list(qs.order_by("sequence"))


def saga_events(saga) -> list[str]:
    return list(
        OutboxEvent.objects.filter(aggregateid=str(saga.id))
        .order_by("sequence")
        .values_list("type", flat=True)
    )


def refund_id(payment_event_id: str):
    return events.refund_request_event_id(
        consumer_group_name=PAYMENT_CONSUMER_GROUP,
        payment_event_id=payment_event_id,
        type=events.ORDER_PAYMENT_AFTER_CANCELLATION,
    )


def paid_order_whose_confirm_fails(inventory, *, event_id: str = "evt-1"):
    inventory.modes["confirm"] = "fail"
    order = place_order()
    drive()
    saga = saga_of(order)
    assert inventory.reserved[str(saga.id)] == "held"
    pay(order, event_id=event_id)
    assert Order.objects.get(pk=order.pk).status == OrderStatus.PAID
    return order, saga


def test_confirm_failing_forever_releases_cancels_and_refunds_once(inventory, settings):
    # given a paid order whose stock the inventory service never confirms (503 on every attempt)
    order, saga = paid_order_whose_confirm_fails(inventory)
    # when the workers run every attempt
    drive()
    # then the confirm was tried SAGA_STEP_MAX_ATTEMPTS times, then the reservation released once
    saga.refresh_from_db()
    steps = steps_of(saga)
    assert inventory.requests["confirm", str(saga.id)] == settings.SAGA_STEP_MAX_ATTEMPTS
    assert steps["confirm_inventory", "action"].status == StepStatus.FAILED
    assert "503" in steps["confirm_inventory", "action"].last_error
    assert steps["release_inventory", "compensation"].status == StepStatus.SUCCEEDED
    assert inventory.effects["release", str(saga.id)] == 1
    assert str(saga.id) not in inventory.reserved
    assert saga.status == SagaStatus.COMPENSATED and saga.reason == CONFIRM_FAILED
    assert saga_events(saga) == ["saga.started", "saga.compensated"]
    # and the order is no longer paid for stock it does not have: cancelled, and refunded once
    order.refresh_from_db()
    assert order.status == OrderStatus.CANCELLED
    assert order.payment_reference == "psp-evt-1"  # what the refund refers to stays
    assert [e.type for e in order_events(order)] == [
        "order.created",
        "order.paid",
        "order.cancelled",
        "order.payment_after_cancellation",
    ]
    [cancelled] = order_events(order, "order.cancelled")
    assert cancelled.payload["reason"] == CONFIRM_FAILED
    assert cancelled.payload["status"] == "cancelled"
    [refund] = order_events(order, "order.payment_after_cancellation")
    assert refund.payload["refund"] is True
    assert refund.payload["reason"] == CONFIRM_FAILED
    assert refund.payload["payment"] == {
        "event_id": "evt-1",
        "provider_reference": "psp-evt-1",
        "amount": "20.00",
        "currency": "USD",
    }
    # under the id a redelivery of that payment would ask for the refund with
    assert refund.id == refund_id("evt-1")


def test_a_redelivered_payment_after_the_compensation_refunds_once(inventory):
    # given a paid order cancelled and refunded because its stock could not be confirmed
    order, saga = paid_order_whose_confirm_fails(inventory, event_id="evt-again")
    drive()
    [refund] = order_events(order, "order.payment_after_cancellation")
    # when the provider redelivers the payment: first inside the dedupe window
    again = pay(order, event_id="evt-again")
    assert again.duplicate is True
    # then after it (the processed_events rows purged), so the handler applies it afresh
    with freeze_time(timezone.now() + timedelta(days=31)):
        assert processed_events_purge() >= 1
        late = pay(order, event_id="evt-again")
        drive()
    # then it finds the order cancelled, asks for the refund under the same id: one refund request
    assert late.duplicate is False and late.outcome == "payment_after_cancellation"
    assert [e.id for e in order_events(order, "order.payment_after_cancellation")] == [refund.id]
    assert Order.objects.get(pk=order.pk).status == OrderStatus.CANCELLED
    assert inventory.requests["reserve", str(saga.id)] == 1  # nothing is reserved again
    assert inventory.effects["release", str(saga.id)] == 1
    saga.refresh_from_db()
    assert saga.status == SagaStatus.COMPENSATED


def test_confirm_and_release_failing_forever_refund_and_leave_the_saga_failed_and_resumable(inventory):
    # given a paid order whose confirm fails and whose release fails too
    order, saga = paid_order_whose_confirm_fails(inventory)
    inventory.modes["release"] = "fail"
    drive()
    # then the saga is failed for an operator (the stock is still held), the money refunded
    saga.refresh_from_db()
    assert saga.status == SagaStatus.FAILED and saga.current_step == "release_inventory"
    assert saga.reason == CONFIRM_FAILED
    assert saga_events(saga)[-1] == "saga.failed"
    assert inventory.reserved[str(saga.id)] == "held"
    assert Order.objects.get(pk=order.pk).status == OrderStatus.CANCELLED
    assert len(order_events(order, "order.payment_after_cancellation")) == 1
    # when the operator resumes it once the inventory service is back
    inventory.modes["release"] = "accept"
    call_command("saga_resume", str(saga.id))
    drive()
    # then the stock is released, and the refund is not asked for a second time
    saga.refresh_from_db()
    assert saga.status == SagaStatus.COMPENSATED
    assert inventory.effects["release", str(saga.id)] == 1
    assert len(order_events(order, "order.payment_after_cancellation")) == 1
    assert len(order_events(order, "order.cancelled")) == 1


def test_an_operator_compensating_a_paid_orders_saga_refunds_it(inventory):
    # given a paid order whose confirm is still being retried
    order, saga = paid_order_whose_confirm_fails(inventory, event_id="evt-op")
    drive(now=timezone.now())  # one attempt; the retry waits for its backoff
    assert steps_of(saga)["confirm_inventory", "action"].status == StepStatus.PENDING
    # when staff give up on it
    call_command("saga_compensate", str(saga.id), "--reason", "operator")
    drive()
    # then it is released, cancelled and refunded like an exhausted confirm
    saga.refresh_from_db()
    assert saga.status == SagaStatus.COMPENSATED and saga.reason == "operator"
    assert inventory.effects["release", str(saga.id)] == 1
    assert Order.objects.get(pk=order.pk).status == OrderStatus.CANCELLED
    [refund] = order_events(order, "order.payment_after_cancellation")
    assert refund.id == refund_id("evt-op") and refund.payload["reason"] == "operator"


def test_a_payment_during_the_reservation_then_a_failing_confirm_refunds_that_payment(inventory):
    # given a payment that arrives before the reservation step ran, and a confirm that fails
    inventory.modes["confirm"] = "fail"
    order = place_order()
    pay(order, event_id="evt-early")
    # when the saga runs
    drive()
    # then it still knows which payment to refund
    saga = saga_of(order)
    saga.refresh_from_db()
    assert saga.status == SagaStatus.COMPENSATED and saga.reason == CONFIRM_FAILED
    assert Order.objects.get(pk=order.pk).status == OrderStatus.CANCELLED
    [refund] = order_events(order, "order.payment_after_cancellation")
    assert refund.id == refund_id("evt-early")
    assert refund.payload["payment"]["provider_reference"] == "psp-evt-early"


def test_a_saga_without_the_payment_in_its_context_refunds_the_payment_it_finds(inventory):
    # given a paid order's saga whose context does not name the payment (started before it did)
    order, saga = paid_order_whose_confirm_fails(inventory, event_id="evt-found")
    saga.refresh_from_db()
    assert saga.context["payment"] == {"event_id": "evt-found", "consumer_group_name": PAYMENT_CONSUMER_GROUP}
    SagaInstance.objects.filter(pk=saga.pk).update(
        context={k: v for k, v in saga.context.items() if k != "payment"}
    )
    # when its confirm gives up
    drive()
    # then the payment applied to the order (processed_events) is the one refunded
    [refund] = order_events(order, "order.payment_after_cancellation")
    assert refund.id == refund_id("evt-found")
    assert refund.payload["payment"]["event_id"] == "evt-found"


def test_a_payment_after_an_inventory_rejection_asks_for_its_refund_once(inventory):
    # given an order cancelled because the inventory rejected it
    inventory.modes["reserve"] = "reject"
    order = place_order()
    drive()
    assert Order.objects.get(pk=order.pk).status == OrderStatus.CANCELLED
    # when the customer's payment still arrives, twice
    first = pay(order, event_id="evt-late")
    second = pay(order, event_id="evt-late")
    drive()
    # then one refund request, nothing reserved again, the saga left compensated
    assert first.outcome == "payment_after_cancellation" and second.duplicate is True
    assert [e.id for e in order_events(order, "order.payment_after_cancellation")] == [refund_id("evt-late")]
    saga = saga_of(order)
    assert inventory.requests["reserve", str(saga.id)] == 1
    assert saga.status == SagaStatus.COMPENSATED
