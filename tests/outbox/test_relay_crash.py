"""A relay process SIGKILLed mid-batch loses nothing: the lease lapses and another relay resends."""

from __future__ import annotations

import select
import signal
import subprocess
import time

import pytest
from django.utils import timezone

from outbox.models import OutboxEvent
from outbox.relay import outbox_relay_drain
from tests.outbox.conftest import RABBIT_URL, assert_order_per_aggregate
from tests.outbox.factories import publish_events

pytestmark = pytest.mark.django_db(transaction=True)


def wait_for_line(process: subprocess.Popen, marker: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"relay exited {process.returncode}: {process.stderr.read()}")
        ready, _, _ = select.select([process.stdout], [], [], 0.5)
        if ready and marker in process.stdout.readline():
            return
    raise AssertionError(f"relay never printed {marker!r}")


def start_paused_relay(relay_process, broker, point: str) -> subprocess.Popen:
    env = {
        "OUTBOX_PUBLISHER": "broker",
        "OUTBOX_BROKER_URL": RABBIT_URL,
        "OUTBOX_EXCHANGE": broker.exchange,
    }
    process = relay_process("--batch-size", "20", "--pause-after", point, env=env)
    wait_for_line(process, f"PAUSED after {point}")
    return process


def lapse_leases() -> None:
    """Time passing beyond OUTBOX_LEASE_SECONDS, without sleeping through it."""
    OutboxEvent.objects.filter(locked_until__isnull=False).update(locked_until=timezone.now())


def test_relay_killed_after_claiming_loses_nothing(broker, relay_process):
    # given 50 events over 5 aggregates, and a relay killed right after committing its claim
    expected = publish_events(count=50, aggregates=5)
    process = start_paused_relay(relay_process, broker, "claim")
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=10)
    leased = OutboxEvent.objects.filter(locked_until__gt=timezone.now()).count()
    assert leased == 20

    # then while its lease runs nobody else sends those aggregates' events out of turn
    assert outbox_relay_drain().published == 0
    assert broker.collect(at_least=0, settle=0.3) == []

    # when the lease lapses another relay takes over
    lapse_leases()
    assert outbox_relay_drain().published == 50

    # then every event arrived once, in order per aggregate
    broker.collect(at_least=50)
    assert len(broker.messages) == 50
    assert_order_per_aggregate(broker.unique_in_order(), expected)


def test_relay_killed_after_publishing_before_marking_resends(broker, relay_process):
    # given a relay killed after the broker confirmed 20 events but before it marked them
    expected = publish_events(count=50, aggregates=5)
    process = start_paused_relay(relay_process, broker, "publish")
    assert len(broker.collect(at_least=20)) == 20
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=10)
    assert OutboxEvent.objects.filter(status="published").count() == 0

    # when the lease lapses and another relay runs
    lapse_leases()
    assert outbox_relay_drain().published == 50

    # then the 20 are delivered twice (at least once) and a consumer deduping by id sees all
    # 50 exactly once, in order per aggregate
    broker.collect(at_least=70)
    assert len(broker.messages) == 70
    assert_order_per_aggregate(broker.unique_in_order(), expected)
    assert OutboxEvent.objects.exclude(status="published").count() == 0
