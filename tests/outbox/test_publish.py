"""Writing events: only inside the business transaction, and a nudge that never fails it."""

from __future__ import annotations

import uuid

import pytest
from celery import signals
from django.db import transaction
from freezegun import freeze_time

from config.celery import app as celery_app
from outbox.models import OutboxEvent
from outbox.services import OutboxOutsideTransaction, outbox_publish
from tests.support.servers import free_port

pytestmark = pytest.mark.django_db(transaction=True)


class Boom(Exception):
    pass


@pytest.fixture
def nudges():
    sent: list[str] = []

    def record(sender=None, **_):  # type: ignore[no-untyped-def]
        sent.append(sender)

    signals.before_task_publish.connect(record, weak=False)
    yield sent
    signals.before_task_publish.disconnect(record)


def test_rollback_leaves_no_event(nudges):
    with pytest.raises(Boom), transaction.atomic():
        outbox_publish(aggregatetype="order", aggregateid="1", type="order.created", payload={})
        assert OutboxEvent.objects.count() == 1
        raise Boom

    assert OutboxEvent.objects.count() == 0
    assert nudges == []  # nothing committed, nothing to relay


def test_publish_outside_a_transaction_is_refused():
    with pytest.raises(OutboxOutsideTransaction):
        outbox_publish(aggregatetype="order", aggregateid="1", type="order.created", payload={})

    assert OutboxEvent.objects.count() == 0


def test_commit_keeps_events_in_write_order_and_nudges_the_relay_once(nudges):
    with transaction.atomic():
        first = outbox_publish(aggregatetype="order", aggregateid="7", type="order.created", payload={"n": 0})
        second = outbox_publish(aggregatetype="order", aggregateid="7", type="order.paid", payload={"n": 1})
        assert nudges == []  # not before commit

    assert nudges == ["outbox.tasks.outbox_relay"]
    stored = list(OutboxEvent.objects.filter(aggregateid="7"))
    assert [event.id for event in stored] == [first.id, second.id]
    assert first.sequence < second.sequence
    assert stored[0].status == OutboxEvent.Status.PENDING


def test_an_event_written_again_under_its_id_is_kept_once(nudges):
    event_id = uuid.uuid4()
    with transaction.atomic():
        first = outbox_publish(
            aggregatetype="order", aggregateid="8", type="order.refund", payload={"n": 0}, event_id=event_id
        )

    # when the same fact is emitted again (later, in another transaction) under the same id
    with transaction.atomic():
        again = outbox_publish(
            aggregatetype="order", aggregateid="8", type="order.refund", payload={"n": 1}, event_id=event_id
        )
        # the transaction is still usable: no error was raised inside it
        other = outbox_publish(aggregatetype="order", aggregateid="8", type="order.other", payload={})

    # then the first row stands, untouched, and the rest of the transaction committed
    assert first.id == again.id == event_id
    assert again.payload == {"n": 0} and again.sequence == first.sequence
    stored = list(OutboxEvent.objects.filter(aggregateid="8"))
    assert [(event.id, event.type) for event in stored] == [
        (event_id, "order.refund"),
        (other.id, "order.other"),
    ]


def test_a_burst_of_commits_sends_one_nudge_and_one_trailing_nudge(nudges):
    def commit(n: int) -> None:
        with transaction.atomic():
            outbox_publish(aggregatetype="order", aggregateid=str(n), type="t", payload={})

    with freeze_time("2026-11-22 03:00:00") as clock:
        # when ten transactions commit within the 0.2 s window
        for n in range(10):
            commit(n)
        # then the relay is asked twice: at once, and once more (delayed) after the burst
        assert nudges == ["outbox.tasks.outbox_relay"] * 2

        # when a commit comes after the trailing nudge ran, it is nudged at once again
        clock.tick(1)
        commit(10)
        assert len(nudges) == 3
    assert OutboxEvent.objects.count() == 11


def test_business_write_commits_when_the_celery_broker_is_down(caplog, monkeypatch):
    # Celery reads CELERY_BROKER_URL from the environment before its configuration.
    monkeypatch.setenv("CELERY_BROKER_URL", f"amqp://guest:guest@127.0.0.1:{free_port()}//")
    celery_app._pool = None
    celery_app.amqp._producer_pool = None
    try:
        with transaction.atomic():
            outbox_publish(aggregatetype="order", aggregateid="9", type="order.created", payload={})
    finally:
        monkeypatch.undo()
        celery_app._pool = None
        celery_app.amqp._producer_pool = None

    assert OutboxEvent.objects.filter(aggregateid="9").count() == 1
    assert "outbox relay nudge not sent" in caplog.text
