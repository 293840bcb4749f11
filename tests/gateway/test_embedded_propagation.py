"""Embedded mode (no Redis): invalidations reach every web process within a second.

Each process keeps its own local layer; without Redis there is no pub/sub, so the invalidation
bus falls back to a database log every process polls. These tests run two real server processes
with `REDIS_URL` empty.
"""

from __future__ import annotations

import time

import pytest
import requests

from tests.gateway.proxy_support import proxy_route

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]


def _all_refused_within(gateways: list[str], headers: dict, seconds: float, status: int = 401) -> float:
    """Seconds until ten requests in a row to every gateway answer `status`; fails after `seconds`."""
    started = time.monotonic()
    while True:
        answers = [
            requests.get(f"{gateway}/gw/orders/1", headers=headers, timeout=10).status_code
            for _ in range(10)
            for gateway in gateways
        ]
        if all(answer == status for answer in answers):
            return time.monotonic() - started
        if time.monotonic() - started > seconds:
            raise AssertionError(f"after {seconds} s still {answers}")
        time.sleep(0.02)


def test_revocation_reaches_two_processes_without_redis(
    http_server_factory, token_service, gateway_process_factory
):
    from django.core.management import call_command

    from tests.support.servers import Reply

    upstream = http_server_factory(lambda request: Reply(200, b"ok"))
    proxy_route(
        upstream.url,
        path="/orders/**",
        methods=("GET",),
        auth_required=True,
        required_permission="order.read",
    )
    env = token_service.env | {"REDIS_URL": "", "WEB_WORKERS": "2"}
    gateways = [gateway_process_factory(env) for _ in range(2)]
    headers = {"Authorization": token_service.bearer(permissions=["order.read"], jti="jti-embedded")}
    for _ in range(20):  # warm both workers of both processes: "not revoked" cached everywhere
        for gateway in gateways:
            assert requests.get(f"{gateway}/gw/orders/1", headers=headers, timeout=10).status_code == 200

    call_command("revoke_token", "jti-embedded")
    revoked_at = time.monotonic()
    took = _all_refused_within(gateways, headers, seconds=1.0 + 0.5)  # 1 s + loaded-machine margin
    print(f"revocation refused on every process after {took:.3f} s")  # pytest -s shows the figure
    assert time.monotonic() - revoked_at < 2.5


def test_rbac_update_reaches_two_processes_without_redis(
    http_server_factory, token_service, rbac_resolver, gateway_process_factory
):
    from tests.support.servers import Reply

    upstream = http_server_factory(lambda request: Reply(200, b"ok"))
    proxy_route(
        upstream.url,
        path="/orders/**",
        methods=("GET",),
        auth_required=True,
        required_permission="order.read",
    )
    rbac_resolver.set("u-embedded", "t1", ["order.read"])
    env = token_service.env | rbac_resolver.env | {"REDIS_URL": "", "WEB_WORKERS": "2"}
    gateways = [gateway_process_factory(env) for _ in range(2)]
    headers = {"Authorization": token_service.bearer(sub="u-embedded", tenant_id="t1")}
    for _ in range(20):
        for gateway in gateways:
            assert requests.get(f"{gateway}/gw/orders/1", headers=headers, timeout=10).status_code == 200

    rbac_resolver.set("u-embedded", "t1", [])
    from gateway.services.rbac import rbac_invalidate

    rbac_invalidate(user_id="u-embedded", tenant_id="t1")
    took = _all_refused_within(gateways, headers, seconds=1.5, status=403)
    print(f"rbac update in effect on every process after {took:.3f} s")


def test_revocation_posted_to_one_process_reaches_the_other_without_redis(
    http_server_factory, token_service, gateway_process_factory
):
    from tests.support.servers import Reply

    upstream = http_server_factory(lambda request: Reply(200, b"ok"))
    proxy_route(
        upstream.url,
        path="/orders/**",
        methods=("GET",),
        auth_required=True,
        required_permission="order.read",
    )
    env = token_service.env | {
        "REDIS_URL": "",
        "WEB_WORKERS": "2",
        "GATEWAY_INTERNAL_TOKEN": "internal-secret",
    }
    first, second = gateway_process_factory(env), gateway_process_factory(env)
    headers = {"Authorization": token_service.bearer(permissions=["order.read"], jti="jti-posted")}
    for _ in range(20):
        assert requests.get(f"{second}/gw/orders/1", headers=headers, timeout=10).status_code == 200

    response = requests.post(
        f"{first}/internal/revocations",
        json={"jti": "jti-posted"},
        headers={"Authorization": "Bearer internal-secret"},
        timeout=10,
    )
    assert response.status_code == 201, response.text
    _all_refused_within([first, second], headers, seconds=1.5)
