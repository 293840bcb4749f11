"""Suite-wide fixtures: a clean Redis database per test, and real HTTP servers on 127.0.0.1."""

from __future__ import annotations

import pytest
from django.conf import settings

from tests.support.gateway_server import _gw_servers, gw, gw_fresh, gw_server  # noqa: F401
from tests.support.servers import (  # noqa: F401  (fixtures re-exported for every test module)
    gateway_process_factory,
    http_server_factory,
)
from tests.support.tokens import rbac_resolver, token_service  # noqa: F401


@pytest.fixture(autouse=True)
def _clean_caches():
    """Every test starts with an empty Redis database and empty per-process caches."""
    from django.core.cache import cache

    if settings.REDIS_URL:
        from django_redis import get_redis_connection

        get_redis_connection("default").flushdb()
    else:
        cache.clear()
    _reset_process_caches()
    yield
    _reset_process_caches()


def _reset_process_caches() -> None:
    """Per-process layers register a reset hook so one test never sees another's state."""
    from common.local_cache import reset_all_local_caches

    reset_all_local_caches()
