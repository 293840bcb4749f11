"""POST /api/payments/events: HMAC-authenticated, applied exactly once, problem+json on refusal."""

from __future__ import annotations

import json
import uuid
from datetime import timedelta

import pytest
from django.utils import timezone
from freezegun import freeze_time

from orders.models import Order, OrderStatus, ProcessedEvent
from orders.payments import processed_events_purge
from outbox.models import OutboxEvent
from outbox.services import outbox_purge_published
from tests.orders.conftest import payment_body, sign
from tests.orders.factories import OrderFactory, ProcessedEventFactory

pytestmark = pytest.mark.django_db


def events_of(order: Order, type: str | None = None) -> list[OutboxEvent]:
    qs = OutboxEvent.objects.filter(aggregatetype="order", aggregateid=str(order.id))
    if type:
        qs = qs.filter(type=type)
    return list(qs.order_by("sequence", "created_at"))


def assert_problem(response, status: int, slug: str) -> dict:
    assert response.status_code == status, response.content
    assert response["Content-Type"] == "application/problem+json"
    body = response.json()
    assert body["status"] == status
    assert body["type"].endswith(slug)
    assert body["detail"]
    return body


def test_success_pays_the_order_and_writes_order_paid(post_payment_event):
    order = OrderFactory()

    response = post_payment_event(payment_body(order, event_id="evt-ok"))

    assert response.status_code == 200
    assert response.json() == {
        "event_id": "evt-ok",
        "order_id": str(order.id),
        "outcome": "paid",
        "order_status": "paid",
        "duplicate": False,
    }
    order.refresh_from_db()
    assert order.status == OrderStatus.PAID
    assert order.payment_reference == "psp-evt-ok"
    [paid] = events_of(order, "order.paid")
    assert paid.payload["order_id"] == str(order.id)
    assert paid.payload["status"] == "paid"
    assert paid.payload["total_amount"] == "20.00"
    assert paid.payload["currency"] == "USD"
    assert ProcessedEvent.objects.get(event_id="evt-ok").outcome == "paid"


def test_duplicate_answers_200_with_no_second_effect(post_payment_event):
    order = OrderFactory()
    body = payment_body(order, event_id="evt-dup")
    first = post_payment_event(body)

    second = post_payment_event(body)

    assert first.status_code == second.status_code == 200
    assert second.json()["duplicate"] is True
    assert second.json()["outcome"] == "paid"
    assert len(events_of(order, "order.paid")) == 1
    assert ProcessedEvent.objects.filter(event_id="evt-dup").count() == 1


def test_failure_cancels_the_order(post_payment_event):
    order = OrderFactory()

    response = post_payment_event(payment_body(order, event_id="evt-fail", type="payment.failed"))

    assert response.status_code == 200
    assert response.json()["outcome"] == "cancelled"
    order.refresh_from_db()
    assert order.status == OrderStatus.CANCELLED
    [cancelled] = events_of(order, "order.cancelled")
    assert cancelled.payload["reason"] == "payment_failed"


def test_failure_after_payment_changes_nothing(post_payment_event):
    order = OrderFactory()
    post_payment_event(payment_body(order, event_id="evt-a"))

    response = post_payment_event(payment_body(order, event_id="evt-b", type="payment.failed"))

    assert response.status_code == 200
    assert response.json()["outcome"] == "ignored"
    order.refresh_from_db()
    assert order.status == OrderStatus.PAID
    assert events_of(order, "order.cancelled") == []


def test_success_after_sweep_keeps_expired_and_asks_for_refund(post_payment_event):
    order = OrderFactory(status=OrderStatus.EXPIRED, expiration_time=timezone.now() - timedelta(minutes=1))

    response = post_payment_event(payment_body(order, event_id="evt-late"))

    assert response.status_code == 200
    assert response.json()["outcome"] == "payment_after_expiry"
    assert response.json()["order_status"] == "expired"
    order.refresh_from_db()
    assert order.status == OrderStatus.EXPIRED
    [refund] = events_of(order, "order.payment_after_expiry")
    assert refund.payload["refund"] is True
    assert refund.payload["payment"]["provider_reference"] == "psp-evt-late"
    assert events_of(order, "order.paid") == []


def test_success_on_overdue_pending_order_expires_it_before_the_sweep(post_payment_event):
    with freeze_time("2026-01-01 10:00:00"):
        order = OrderFactory(expiration_time=timezone.now() + timedelta(minutes=15))
    with freeze_time("2026-01-01 10:15:01"):
        response = post_payment_event(payment_body(order, event_id="evt-overdue"))

    assert response.status_code == 200
    assert response.json()["outcome"] == "payment_after_expiry"
    order.refresh_from_db()
    assert order.status == OrderStatus.EXPIRED
    assert [e.type for e in events_of(order)] == ["order.expired", "order.payment_after_expiry"]


def test_success_on_cancelled_order_asks_for_refund(post_payment_event):
    order = OrderFactory(status=OrderStatus.CANCELLED)

    response = post_payment_event(payment_body(order, event_id="evt-c"))

    assert response.json()["outcome"] == "payment_after_cancellation"
    order.refresh_from_db()
    assert order.status == OrderStatus.CANCELLED
    assert len(events_of(order, "order.payment_after_cancellation")) == 1


@pytest.mark.parametrize(
    ("status", "refund_type"),
    [
        (OrderStatus.EXPIRED, "order.payment_after_expiry"),
        (OrderStatus.CANCELLED, "order.payment_after_cancellation"),
    ],
)
def test_redelivery_after_the_dedupe_window_asks_for_the_refund_under_the_same_event_id(
    post_payment_event, status, refund_type
):
    # given: a payment for a closed order, answered with a refund request, whose processed_events
    # row is purged 31 days later
    order = OrderFactory(status=status, expiration_time=timezone.now() - timedelta(minutes=1))
    body = payment_body(order, event_id="evt-refund-once")
    assert post_payment_event(body).json()["duplicate"] is False
    [first] = events_of(order, refund_type)
    with freeze_time(timezone.now() + timedelta(days=31)):
        assert processed_events_purge() == 1

        # when: the provider redelivers it while the first request is still in the outbox
        again = post_payment_event(body)

    # then: it is applied again (nothing remembers it) but asks for no second refund
    assert again.status_code == 200
    assert again.json()["duplicate"] is False
    assert [event.id for event in events_of(order, refund_type)] == [first.id]

    # when: the first request was published and purged from the outbox, and the dedupe record too
    OutboxEvent.objects.filter(pk=first.pk).update(status="published", published_at=timezone.now())
    with freeze_time(timezone.now() + timedelta(days=62)):
        assert outbox_purge_published() == 1
        assert processed_events_purge() == 1
        post_payment_event(body)

    # then: the request is written again under the first one's id, which consumers deduped by
    [second] = events_of(order, refund_type)
    assert second.id == first.id
    assert second.payload == first.payload


@pytest.mark.parametrize(
    "signature",
    [None, "", "sha256=" + "0" * 64, "md5=abc", "sha256=", "garbage"],
    ids=["missing", "empty", "wrong-digest", "wrong-scheme", "no-digest", "garbage"],
)
def test_bad_signature_is_401_problem_and_changes_nothing(post_payment_event, signature):
    order = OrderFactory()

    response = post_payment_event(payment_body(order), signature=signature)

    assert_problem(response, 401, "invalid-signature")
    assert response["WWW-Authenticate"]
    order.refresh_from_db()
    assert order.status == OrderStatus.PENDING_PAYMENT
    assert ProcessedEvent.objects.count() == 0
    assert events_of(order, "order.paid") == []


def test_signature_is_checked_on_the_raw_bytes(post_payment_event):
    order = OrderFactory()
    body = payment_body(order)
    reformatted = json.dumps(json.loads(body), indent=2).encode()  # same JSON, other bytes

    response = post_payment_event(reformatted, signature=sign(body))

    assert_problem(response, 401, "invalid-signature")


def test_signature_with_another_secret_is_refused(post_payment_event):
    order = OrderFactory()
    body = payment_body(order)

    response = post_payment_event(body, signature=sign(body, secret="not-the-secret"))

    assert_problem(response, 401, "invalid-signature")


def test_unconfigured_secret_refuses_every_event(post_payment_event, settings):
    settings.PAYMENT_WEBHOOK_SECRET = ""
    order = OrderFactory()
    body = payment_body(order)

    response = post_payment_event(body, signature=sign(body, secret=""))

    assert_problem(response, 503, "service-unavailable")
    order.refresh_from_db()
    assert order.status == OrderStatus.PENDING_PAYMENT


def test_bad_json_is_400_problem(post_payment_event):
    response = post_payment_event(b'{"event_id": "e1", ')

    assert_problem(response, 400, "validation-error")
    assert ProcessedEvent.objects.count() == 0


def test_invalid_fields_are_listed(post_payment_event):
    body = json.dumps(
        {"event_id": "", "type": "payment.maybe", "order_id": "nope", "amount": 20.0, "currency": "usd"}
    ).encode()

    response = post_payment_event(body)

    problem = assert_problem(response, 400, "validation-error")
    assert set(problem["errors"]) == {
        "event_id",
        "type",
        "order_id",
        "amount",
        "currency",
        "provider_reference",
    }


@pytest.mark.parametrize(
    "overrides",
    [{"amount": "19.99"}, {"currency": "EUR"}, {"amount": "20.001"}],
    ids=["amount", "currency", "dp"],
)
def test_wrong_amount_or_currency_is_422_with_no_transition(post_payment_event, overrides):
    order = OrderFactory()

    response = post_payment_event(payment_body(order, event_id="evt-wrong", **overrides))

    if overrides == {"amount": "20.001"}:
        assert_problem(response, 400, "validation-error")
    else:
        problem = assert_problem(response, 422, "payment-amount-mismatch")
        assert problem["expected"] == {"amount": "20.00", "currency": "USD"}
    order.refresh_from_db()
    assert order.status == OrderStatus.PENDING_PAYMENT
    assert events_of(order, "order.paid") == []
    # Not recorded: the same event id, corrected, is still applied.
    assert not ProcessedEvent.objects.filter(event_id="evt-wrong").exists()
    assert post_payment_event(payment_body(order, event_id="evt-wrong")).json()["outcome"] == "paid"


def test_unknown_order_is_404_problem(post_payment_event):
    ghost = Order(id=uuid.uuid4(), total_amount="20.00", currency="USD")

    response = post_payment_event(payment_body(ghost, event_id="evt-ghost"))

    assert_problem(response, 404, "order-not-found")
    assert ProcessedEvent.objects.count() == 0


def test_event_ids_are_deduplicated_per_consumer_group(post_payment_event):
    order = OrderFactory()
    ProcessedEventFactory(event_id="evt-shared", consumer_group_name="some-other-consumer")

    response = post_payment_event(payment_body(order, event_id="evt-shared"))

    assert response.json()["outcome"] == "paid"
    assert response.json()["duplicate"] is False


def test_idempotency_key_on_intake_replays_the_first_answer(post_payment_event, client):
    order = OrderFactory()
    body = payment_body(order, event_id="evt-key")
    headers = {"HTTP_X_SIGNATURE": sign(body), "HTTP_IDEMPOTENCY_KEY": "pay-1"}

    first = client.post("/api/payments/events", data=body, content_type="application/json", **headers)
    second = client.post("/api/payments/events", data=body, content_type="application/json", **headers)

    assert first.status_code == second.status_code == 200
    assert second["Idempotent-Replayed"] == "true"
    assert second.content == first.content
    assert len(events_of(order, "order.paid")) == 1


def test_unsigned_request_cannot_burn_an_idempotency_key(client):
    order = OrderFactory()
    body = payment_body(order, event_id="evt-burn")

    forged = client.post(
        "/api/payments/events",
        data=body,
        content_type="application/json",
        HTTP_X_SIGNATURE="sha256=" + "0" * 64,
        HTTP_IDEMPOTENCY_KEY="pay-2",
    )
    genuine = client.post(
        "/api/payments/events",
        data=body,
        content_type="application/json",
        HTTP_X_SIGNATURE=sign(body),
        HTTP_IDEMPOTENCY_KEY="pay-2",
    )

    assert forged.status_code == 401
    assert genuine.status_code == 200
    assert genuine.json()["outcome"] == "paid"


def test_payment_outcomes_are_counted(post_payment_event):
    from prometheus_client import REGISTRY

    def sample(outcome: str) -> float:
        labels = {"outcome": outcome, "channel": "http"}
        return REGISTRY.get_sample_value("gatehouse_payment_events_total", labels) or 0.0

    paid, duplicate = sample("paid"), sample("duplicate")
    order = OrderFactory()
    body = payment_body(order, event_id="evt-metric")

    post_payment_event(body)
    post_payment_event(body)

    assert sample("paid") == paid + 1
    assert sample("duplicate") == duplicate + 1
