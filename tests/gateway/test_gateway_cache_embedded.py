"""`gateway_cache` in embedded mode (no Redis): honest about what it cannot reach, and a flush that
reaches the server processes through the database leg of the invalidation bus."""

from __future__ import annotations

import io
import time

import pytest
import requests
from django.core.management import call_command
from django.core.management.base import CommandError

from tests.gateway.proxy_support import proxy_route
from tests.support.servers import Reply


def test_stats_in_embedded_mode_says_it_cannot_read_the_servers_caches(settings):
    settings.REDIS_URL = ""
    with pytest.raises(CommandError, match="cannot read"):
        call_command("gateway_cache", "stats", stdout=io.StringIO())


@pytest.mark.django_db
def test_flush_of_responses_in_embedded_mode_exits_non_zero(settings):
    settings.REDIS_URL = ""
    with pytest.raises(CommandError, match="response caches"):
        call_command("gateway_cache", "flush", "--kind", "responses", stdout=io.StringIO())


def test_arguments_are_validated():
    with pytest.raises(CommandError):
        call_command("gateway_cache", "purge")
    with pytest.raises(CommandError):
        call_command("gateway_cache", "flush", "--kind", "everything")


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_flush_of_rbac_reaches_every_server_process_without_redis(
    settings, http_server_factory, token_service, rbac_resolver, gateway_process_factory
):
    upstream = http_server_factory(lambda request: Reply(200, b"ok"))
    proxy_route(
        upstream.url, path="/orders/**", methods=("GET",), auth_required=True, required_permission="p"
    )
    rbac_resolver.set("u-flush", "t1", ["p"])
    env = token_service.env | rbac_resolver.env | {"REDIS_URL": "", "WEB_WORKERS": "2"}
    gateway = gateway_process_factory(env)
    headers = {"Authorization": token_service.bearer(sub="u-flush", tenant_id="t1")}
    for _ in range(10):
        assert requests.get(f"{gateway}/gw/orders/1", headers=headers, timeout=10).status_code == 200
    rbac_resolver.set("u-flush", "t1", [])

    settings.REDIS_URL = ""
    out = io.StringIO()
    call_command("gateway_cache", "flush", "--kind", "rbac", stdout=out)
    assert "within 1 s" in out.getvalue()
    deadline = time.monotonic() + 1.5
    while True:
        answers = [
            requests.get(f"{gateway}/gw/orders/1", headers=headers, timeout=10).status_code for _ in range(10)
        ]
        if answers == [403] * 10:
            break
        assert time.monotonic() < deadline, answers
        time.sleep(0.02)
