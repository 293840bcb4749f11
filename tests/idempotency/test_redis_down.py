"""Redis is only a read-through layer: with it down, idempotency stays correct and fast."""

from __future__ import annotations

import copy
import socket
import time

import pytest

from common.local_cache import reset_all_local_caches
from idempotency.models import IdempotencyRecord
from tests.support.servers import free_port

pytestmark = [pytest.mark.django_db, pytest.mark.urls("tests.idempotency.urls")]

URL = "/t/public-things"
BODY = {"name": "widget"}


def _point_cache_at(settings, location: str) -> None:
    caches = copy.deepcopy(settings.CACHES)
    caches["default"]["LOCATION"] = location
    settings.CACHES = caches


def test_redis_refusing_connections_still_replays_and_conflicts_from_the_database(
    post, executions, settings, django_capture_on_commit_callbacks
):
    _point_cache_at(settings, f"redis://127.0.0.1:{free_port()}/0")

    with django_capture_on_commit_callbacks(execute=True):
        first = post(URL, BODY, key="k-down")
    reset_all_local_caches()
    replay = post(URL, BODY, key="k-down")
    conflict = post(URL, {"name": "other"}, key="k-down")

    assert first.status_code == 201
    assert replay.status_code == 201
    assert replay["Idempotent-Replayed"] == "true"
    assert replay.content == first.content
    assert conflict.status_code == 409
    assert executions == 1
    assert IdempotencyRecord.objects.get().status == IdempotencyRecord.Status.COMPLETED


def test_a_hanging_redis_costs_one_timeout_not_one_per_request(post, executions, settings):
    # A listener that accepts connections and never answers: every Redis call would wait for
    # the socket timeout (0.25 s) if the idempotency layer kept trying.
    blackhole = socket.socket()
    blackhole.bind(("127.0.0.1", 0))
    blackhole.listen(128)
    try:
        _point_cache_at(settings, f"redis://127.0.0.1:{blackhole.getsockname()[1]}/0")
        post(URL, BODY, key="k-hang")
        started = time.monotonic()
        responses = []
        for _ in range(20):
            reset_all_local_caches()
            responses.append(post(URL, BODY, key="k-hang"))
        elapsed = time.monotonic() - started
    finally:
        blackhole.close()

    assert all(response["Idempotent-Replayed"] == "true" for response in responses)
    assert executions == 1
    assert elapsed < 3.0, f"20 replays took {elapsed:.2f}s: Redis timeouts paid per request"
