"""Races on PostgreSQL with real transactions: threads, each on its own connection, released together."""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from decimal import Decimal
from typing import Any

import pytest
from django.db import connection
from django.utils import timezone

from orders import services
from orders.models import Order, OrderStatus, ProcessedEvent
from outbox.models import OutboxEvent
from tests.orders.factories import OrderFactory, overdue_orders_bulk

pytestmark = pytest.mark.django_db(transaction=True)


def run_together(*calls: Callable[[], Any]) -> list[Any]:
    """Run each call in its own thread (own DB connection), all released by one barrier."""
    barrier = threading.Barrier(len(calls))

    def run(call: Callable[[], Any]) -> Any:
        try:
            barrier.wait(timeout=10)
            return call()
        finally:
            connection.close()

    with ThreadPoolExecutor(max_workers=len(calls)) as pool:
        futures = [pool.submit(run, call) for call in calls]
        return [future.result(timeout=60) for future in futures]


def success_event(order: Order, event_id: str) -> services.PaymentEvent:
    return services.PaymentEvent(
        event_id=event_id,
        type="payment.success",
        order_id=order.id,
        amount=Decimal(order.total_amount),
        currency=order.currency,
        provider_reference=f"psp-{event_id}",
    )


def event_types(order: Order) -> list[str]:
    return list(
        OutboxEvent.objects.filter(aggregateid=str(order.id))
        .order_by("sequence")
        .values_list("type", flat=True)
    )


def test_same_payment_event_twice_at_once_applies_once():
    order = OrderFactory()
    event = success_event(order, "evt-twin")

    results = run_together(
        lambda: services.payment_event_handle(event=event), lambda: services.payment_event_handle(event=event)
    )

    assert sorted(result.duplicate for result in results) == [False, True]
    assert {result.outcome for result in results} == {"paid"}
    order.refresh_from_db()
    assert order.status == OrderStatus.PAID
    assert event_types(order) == ["order.paid"]
    assert ProcessedEvent.objects.filter(event_id="evt-twin").count() == 1


def test_two_different_success_events_for_one_order_pay_it_once():
    order = OrderFactory()

    results = run_together(
        lambda: services.payment_event_handle(event=success_event(order, "evt-1")),
        lambda: services.payment_event_handle(event=success_event(order, "evt-2")),
    )

    assert sorted(result.outcome for result in results) == ["already_paid", "paid"]
    assert event_types(order) == ["order.paid"]


def test_payment_racing_the_sweep_has_exactly_one_winner():
    # The payment arrives one second before the deadline (its clock), the sweep runs one second
    # after it (its clock): either may take the row lock first. Repeated to see both orders.
    outcomes: Counter[str] = Counter()
    for round_number in range(12):
        deadline = timezone.now() + timedelta(minutes=5)
        order = OrderFactory(expiration_time=deadline)
        event = success_event(order, f"evt-race-{round_number}")

        payment, swept = run_together(
            lambda event=event, deadline=deadline: services.payment_event_handle(
                event=event, now=deadline - timedelta(seconds=1)
            ),
            lambda deadline=deadline: services.order_expire_due(now=deadline + timedelta(seconds=1)),
        )

        order.refresh_from_db()
        types = event_types(order)
        if order.status == OrderStatus.PAID:
            assert payment.outcome == "paid"
            assert swept == 0
            assert types == ["order.paid"]
        else:
            assert order.status == OrderStatus.EXPIRED
            assert payment.outcome == "payment_after_expiry"
            assert swept == 1
            assert types == ["order.expired", "order.payment_after_expiry"]
        outcomes[order.status] += 1
    assert sum(outcomes.values()) == 12


def test_two_sweeps_at_once_expire_each_order_once():
    order_ids = overdue_orders_bulk(3000)

    first, second = run_together(
        lambda: services.order_expire_due(batch_size=250), lambda: services.order_expire_due(batch_size=250)
    )

    assert first + second == 3000
    assert Order.objects.filter(status=OrderStatus.EXPIRED).count() == 3000
    expired_events = OutboxEvent.objects.filter(type="order.expired")
    assert expired_events.count() == 3000
    assert set(expired_events.values_list("aggregateid", flat=True)) == {str(pk) for pk in order_ids}


def test_cancel_racing_payment_has_one_winner():
    order = OrderFactory()

    def cancel() -> str:
        try:
            return services.order_cancel(order_id=order.id).status
        except services.OrderNotPending:
            return "conflict"

    cancelled, payment = run_together(
        cancel, lambda: services.payment_event_handle(event=success_event(order, "evt-vs-cancel"))
    )

    order.refresh_from_db()
    if order.status == OrderStatus.PAID:
        assert (cancelled, payment.outcome) == ("conflict", "paid")
        assert event_types(order) == ["order.paid"]
    else:
        assert (cancelled, payment.outcome) == ("cancelled", "payment_after_cancellation")
        assert event_types(order) == ["order.cancelled", "order.payment_after_cancellation"]


def test_same_payment_event_twice_at_once_over_http_on_the_production_server(gateway_process_factory):
    import requests

    from tests.orders.conftest import payment_body, sign

    order = OrderFactory()
    url = gateway_process_factory() + "/api/payments/events"
    body = payment_body(order, event_id="evt-http-twin")
    headers = {"Content-Type": "application/json", "X-Signature": sign(body)}

    responses = run_together(
        lambda: requests.post(url, data=body, headers=headers, timeout=10),
        lambda: requests.post(url, data=body, headers=headers, timeout=10),
    )

    assert [r.status_code for r in responses] == [200, 200]
    assert sorted(r.json()["duplicate"] for r in responses) == [False, True]
    order.refresh_from_db()
    assert order.status == OrderStatus.PAID
    assert event_types(order) == ["order.paid"]
    assert ProcessedEvent.objects.filter(event_id="evt-http-twin").count() == 1
