"""Races on PostgreSQL with real transactions: threads, each on its own connection, released together."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from decimal import Decimal
from typing import Any

import pytest
from django.db import connection, transaction
from django.utils import timezone

from orders import errors, expiry, payments, services
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


def success_event(order: Order, event_id: str) -> payments.PaymentEvent:
    return payments.PaymentEvent(
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
        lambda: payments.payment_event_handle(event=event), lambda: payments.payment_event_handle(event=event)
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
        lambda: payments.payment_event_handle(event=success_event(order, "evt-1")),
        lambda: payments.payment_event_handle(event=success_event(order, "evt-2")),
    )

    assert sorted(result.outcome for result in results) == ["already_paid", "paid"]
    assert event_types(order) == ["order.paid"]


def assert_exactly_one_winner(order: Order, payment: payments.PaymentEventResult, swept: int) -> str:
    """Payment and sweep raced for one order: exactly one of them changed it, the events match
    the winner, and the payment event was recorded once with its outcome. Returns the status."""
    order.refresh_from_db()
    types = event_types(order)
    if order.status == OrderStatus.PAID:
        assert (payment.outcome, swept) == ("paid", 0)
        assert types == ["order.paid"]
    else:
        assert order.status == OrderStatus.EXPIRED
        assert (payment.outcome, swept) == ("payment_after_expiry", 1)
        assert types == ["order.expired", "order.payment_after_expiry"]
    assert payment.duplicate is False
    processed = ProcessedEvent.objects.filter(event_id=payment.event_id)
    assert list(processed.values_list("outcome", flat=True)) == [payment.outcome]
    return order.status


def test_payment_racing_the_sweep_has_exactly_one_winner():
    # The payment arrives one second before the deadline (its clock), the sweep runs one second
    # after it (its clock), released together: whichever takes the row lock first wins. Which
    # one that is depends on the scheduler; the two tests below force each order.
    for round_number in range(12):
        deadline = timezone.now() + timedelta(minutes=5)
        order = OrderFactory(expiration_time=deadline)
        event = success_event(order, f"evt-race-{round_number}")

        payment, swept = run_together(
            lambda event=event, deadline=deadline: payments.payment_event_handle(
                event=event, now=deadline - timedelta(seconds=1)
            ),
            lambda deadline=deadline: expiry.order_expire_due(now=deadline + timedelta(seconds=1)),
        )

        assert_exactly_one_winner(order, payment, swept)


class Session:
    """`call` in its own thread and database connection (`pid` is its PostgreSQL backend).

    With `hold=True` the call runs inside a transaction that stays open after it returned, keeping
    the row locks it took, until `finish()`: how a test forces which of two racers locks first.
    """

    def __init__(self, call: Callable[[], Any], *, hold: bool = False) -> None:
        self.pid = 0
        self._call, self._hold = call, hold
        self._result: Any = None
        self._error: BaseException | None = None
        self._started, self._returned, self._release = threading.Event(), threading.Event(), threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        assert self._started.wait(timeout=10)

    def _run(self) -> None:
        try:
            connection.ensure_connection()
            self.pid = connection.connection.info.backend_pid
            self._started.set()
            if self._hold:
                with transaction.atomic():
                    self._result = self._call()
                    self._returned.set()
                    self._release.wait(timeout=60)
            else:
                self._result = self._call()
        except BaseException as exc:  # handed to the test thread
            self._error = exc
        finally:
            self._started.set()
            self._returned.set()
            connection.close()

    def returned(self) -> Any:
        """The call's result; with hold=True its transaction is still open."""
        assert self._returned.wait(timeout=30), "the call did not return"
        if self._error is not None:
            raise self._error
        return self._result

    def finish(self, *, timeout: float = 30) -> Any:
        """Commit (hold=True) and wait for the thread; fails if it is still running (waiting)."""
        self._release.set()
        self._thread.join(timeout)
        assert not self._thread.is_alive(), "still running: waiting on a lock?"
        return self.returned()

    def is_waiting_for(self, other: Session) -> bool:
        with connection.cursor() as cursor:
            cursor.execute("SELECT %s = ANY(pg_blocking_pids(%s))", [other.pid, self.pid])
            return bool(cursor.fetchone()[0])


def wait_until(condition: Callable[[], bool], *, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.01)


def test_payment_holding_the_order_wins_and_the_sweep_skips_it():
    deadline = timezone.now() + timedelta(minutes=5)
    order = OrderFactory(expiration_time=deadline)
    event = success_event(order, "evt-payment-first")

    # given: the payment has locked and paid the order, its transaction not yet committed
    payment = Session(
        lambda: payments.payment_event_handle(event=event, now=deadline - timedelta(seconds=1)), hold=True
    )
    try:
        assert payment.returned().outcome == "paid"
        # when: the sweep runs after the deadline meanwhile
        sweep = Session(lambda: expiry.order_expire_due(now=deadline + timedelta(seconds=1)))
        # then: it skips the locked order at once (SKIP LOCKED) instead of waiting for it
        swept = sweep.finish(timeout=10)
    finally:
        result = payment.finish()

    assert assert_exactly_one_winner(order, result, swept) == OrderStatus.PAID


def test_sweep_holding_the_order_wins_and_the_payment_asks_for_a_refund():
    deadline = timezone.now() + timedelta(minutes=5)
    order = OrderFactory(expiration_time=deadline)
    event = success_event(order, "evt-sweep-first")

    # given: the sweep has claimed and expired the order, its transaction not yet committed
    sweep = Session(lambda: expiry.order_expire_due(now=deadline + timedelta(seconds=1)), hold=True)
    try:
        assert sweep.returned() == 1
        # when: the payment (sent before the deadline) arrives meanwhile, and waits for the lock
        payment = Session(
            lambda: payments.payment_event_handle(event=event, now=deadline - timedelta(seconds=1))
        )
        wait_until(lambda: payment.is_waiting_for(sweep))
    finally:
        swept = sweep.finish()

    # then: once the sweep commits, the payment finds the order expired and asks for a refund
    assert assert_exactly_one_winner(order, payment.finish(), swept) == OrderStatus.EXPIRED


def test_two_sweeps_at_once_expire_each_order_once():
    order_ids = overdue_orders_bulk(3000)

    first, second = run_together(
        lambda: expiry.order_expire_due(batch_size=250), lambda: expiry.order_expire_due(batch_size=250)
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
        except errors.OrderNotPending:
            return "conflict"

    cancelled, payment = run_together(
        cancel, lambda: payments.payment_event_handle(event=success_event(order, "evt-vs-cancel"))
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
