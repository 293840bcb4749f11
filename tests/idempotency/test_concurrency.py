"""Concurrent identical requests against real server processes: exactly one execution."""

from __future__ import annotations

import json
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from idempotency.models import IdempotencyRecord
from outbox.models import OutboxEvent
from tests.idempotency.views import AGGREGATE

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]

SETTINGS = {"DJANGO_SETTINGS_MODULE": "tests.idempotency.settings"}
CLIENTS = 50


def _fire(urls: list[str], key: str) -> list[requests.Response]:
    body = json.dumps({"name": "widget", "delay_ms": 700})
    barrier = threading.Barrier(CLIENTS)

    def one(index: int) -> requests.Response:
        barrier.wait(timeout=30)
        return requests.post(
            f"{urls[index % len(urls)]}/t/public-things",
            data=body,
            headers={"Content-Type": "application/json", "Idempotency-Key": key},
            timeout=60,
        )

    with ThreadPoolExecutor(max_workers=CLIENTS) as pool:
        return list(pool.map(one, range(CLIENTS)))


def _assert_exactly_one_execution(responses: list[requests.Response], executions) -> None:
    created = [r for r in responses if r.status_code == 201]
    originals = [r for r in created if "Idempotent-Replayed" not in r.headers]
    replays = [r for r in created if r.headers.get("Idempotent-Replayed") == "true"]
    in_progress = [
        r for r in responses if r.status_code == 409 and r.json()["type"].endswith("/idempotency-in-progress")
    ]
    assert len(originals) == 1, [r.status_code for r in responses]
    assert len(originals) + len(replays) + len(in_progress) == CLIENTS, [r.status_code for r in responses]
    assert all(r.content == originals[0].content for r in replays)
    assert all(r.headers.get("Retry-After") for r in in_progress)
    assert executions == 1
    assert OutboxEvent.objects.filter(aggregatetype=AGGREGATE).count() == 1
    record = IdempotencyRecord.objects.get()
    assert record.status == IdempotencyRecord.Status.COMPLETED


def test_fifty_concurrent_identical_requests_execute_once(gateway_process_factory, executions):
    url = gateway_process_factory(SETTINGS)

    responses = _fire([url], "burst-1")

    _assert_exactly_one_execution(responses, executions)


def test_fifty_concurrent_requests_across_two_server_processes_execute_once(
    gateway_process_factory, executions
):
    urls = [gateway_process_factory(SETTINGS), gateway_process_factory(SETTINGS)]

    responses = _fire(urls, "burst-2")

    _assert_exactly_one_execution(responses, executions)
    # and a late retry on either process is a replay
    for url in urls:
        late = requests.post(
            f"{url}/t/public-things",
            data=json.dumps({"name": "widget", "delay_ms": 700}),
            headers={"Content-Type": "application/json", "Idempotency-Key": "burst-2"},
            timeout=30,
        )
        assert late.headers.get("Idempotent-Replayed") == "true"
    assert executions == 1
