"""Outbox fixtures: a unique RabbitMQ exchange + bound queue per test, and a collector."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
import uuid
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import amqp
import pytest

RABBIT_URL = os.environ.get("OUTBOX_TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672//")
ROOT = Path(__file__).resolve().parents[2]


@dataclass
class Delivered:
    message_id: str
    routing_key: str
    headers: dict[str, Any]
    body: dict[str, Any]
    delivery_mode: int | None


@dataclass
class BrokerQueue:
    """A queue bound to the test's exchange with `#`; `collect()` reads what the relay sent."""

    exchange: str
    queue: str
    messages: list[Delivered] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._connection = amqp.Connection("127.0.0.1:5672", userid="guest", password="guest")
        self._connection.connect()
        self._channel = self._connection.channel()
        self._channel.exchange_declare(self.exchange, "topic", durable=True, auto_delete=False)
        self._channel.queue_declare(self.queue, durable=False, auto_delete=False)
        self._channel.queue_bind(self.queue, self.exchange, routing_key="#")
        self._consumer_tag = self._channel.basic_consume(self.queue, callback=self._on_message, no_ack=True)

    def _on_message(self, message: amqp.Message) -> None:
        self.messages.append(
            Delivered(
                message_id=message.properties.get("message_id"),
                routing_key=message.delivery_info["routing_key"],
                headers=dict(message.properties.get("application_headers") or {}),
                body=json.loads(message.body),
                delivery_mode=message.properties.get("delivery_mode"),
            )
        )

    def collect(self, *, at_least: int, timeout: float = 15.0, settle: float = 0.2) -> list[Delivered]:
        """Read until `at_least` messages arrived, then `settle` seconds more for stragglers."""
        deadline = time.monotonic() + timeout
        while len(self.messages) < at_least and time.monotonic() < deadline:
            with contextlib.suppress(TimeoutError):
                self._connection.drain_events(timeout=0.5)
        quiet_until = time.monotonic() + settle
        while time.monotonic() < quiet_until:
            try:
                self._connection.drain_events(timeout=settle)
            except TimeoutError:
                break
        return self.messages

    def unique_in_order(self) -> list[Delivered]:
        """What a consumer that dedupes by message id (first delivery wins) processes."""
        seen: set[str] = set()
        unique = []
        for message in self.messages:
            if message.message_id not in seen:
                seen.add(message.message_id)
                unique.append(message)
        return unique

    def close(self) -> None:
        try:
            self._channel.basic_cancel(self._consumer_tag)
            self._channel.queue_delete(self.queue)
            self._channel.exchange_delete(self.exchange)
        finally:
            self._connection.close()


def assert_order_per_aggregate(messages: list[Delivered], expected: dict[str, int]) -> None:
    """Every aggregate's events arrived, each once, in write order (payload n = 0, 1, 2…)."""
    seen: dict[str, list[int]] = defaultdict(list)
    sequences: dict[str, list[int]] = defaultdict(list)
    for message in messages:
        seen[message.body["aggregateid"]].append(message.body["payload"]["n"])
        sequences[message.body["aggregateid"]].append(message.headers["sequence"])
    assert {key: len(value) for key, value in seen.items()} == expected
    for aggregate, numbers in seen.items():
        assert numbers == list(range(expected[aggregate])), aggregate
        assert sequences[aggregate] == sorted(sequences[aggregate]), aggregate


@pytest.fixture(autouse=True)
def _nudges_enabled():
    """A test that took the Celery broker down must not pause the next test's nudges."""
    from outbox.services import _NudgeState

    def reset() -> None:
        _NudgeState.paused_until = 0.0
        _NudgeState.last_immediate_at = _NudgeState.trailing_runs_at = float("-inf")

    reset()
    yield
    reset()


@pytest.fixture
def broker(settings):
    """Point the broker publisher at a fresh exchange of the real RabbitMQ, with a bound queue."""
    from outbox.publishers import close_cached_publisher

    name = f"test-outbox-{uuid.uuid4().hex[:12]}"
    queue = BrokerQueue(exchange=name, queue=f"{name}-q")
    settings.OUTBOX_PUBLISHER = "broker"
    settings.OUTBOX_BROKER_URL = RABBIT_URL
    settings.OUTBOX_EXCHANGE = name
    yield queue
    close_cached_publisher()
    queue.close()


@pytest.fixture
def relay_process():
    """Start `manage.py drain_outbox …` against the test database; killed at teardown."""
    from django.db import connection

    processes: list[subprocess.Popen] = []

    def start(*args: str, env: dict[str, str]) -> subprocess.Popen:
        db = connection.settings_dict
        process = subprocess.Popen(
            [sys.executable, "manage.py", "drain_outbox", *args],
            cwd=ROOT,
            env={
                **os.environ,
                "DJANGO_SETTINGS_MODULE": "config.settings.test",
                "DATABASE_URL": f"postgres://{db['USER']}@{db['HOST']}:{db['PORT']}/{db['NAME']}",
                "PYTHONUNBUFFERED": "1",
                **env,
            },
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        processes.append(process)
        return process

    yield start
    for process in processes:
        if process.poll() is None:
            process.kill()
        process.wait(timeout=10)
        for stream in (process.stdout, process.stderr):
            if stream:
                stream.close()
