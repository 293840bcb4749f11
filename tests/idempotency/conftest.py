from __future__ import annotations

import json

import pytest

from idempotency.cache import reset_redis_breaker
from tests.idempotency.views import COUNTER_KEY, FAIL_KEY, test_redis


@pytest.fixture(autouse=True)
def _redis_breaker_closed():
    reset_redis_breaker()
    yield
    reset_redis_breaker()


class Executions:
    """How many times the test views' handler ran (every run, even one rolled back)."""

    def __int__(self) -> int:
        return int(test_redis().get(COUNTER_KEY) or 0)

    def __eq__(self, other: object) -> bool:
        return int(self) == other

    def __repr__(self) -> str:
        return f"Executions({int(self)})"

    def fail_next(self, count: int = 1) -> None:
        test_redis().set(FAIL_KEY, count)


@pytest.fixture
def executions() -> Executions:
    return Executions()


@pytest.fixture
def post(client):
    """POST JSON through the Django test client: post(url, body, key=..., **extra)."""

    def send(url: str, body: dict | bytes, key: str | None = None, **extra):
        if key is not None:
            extra["HTTP_IDEMPOTENCY_KEY"] = key
        data = body if isinstance(body, bytes) else json.dumps(body)
        return client.post(url, data=data, content_type="application/json", **extra)

    return send
