"""The async auth API the asyncio pipeline calls: same answers as the sync one."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor

import pytest
from asgiref.sync import async_to_sync

from common.errors import NotAuthenticated, PermissionDenied
from gateway.services.auth import request_identity, request_identity_async
from gateway.services.revocation import token_revoke
from gateway.types import ResolvedRoute, RouteMatch

pytestmark = pytest.mark.django_db(transaction=True)


def _match(required_permission: str = "") -> RouteMatch:
    route = ResolvedRoute(
        id=1,
        methods=("GET",),
        path="/orders/**",
        service="orders.test",
        targets=("http://127.0.0.1:9",),
        required_permission=required_permission,
    )
    return RouteMatch(route=route, params={}, path="/orders/1")


def _async_identity(**kwargs):  # noqa: ANN003, ANN202
    # A thread of its own: a browser test earlier in this worker may leave an event loop set.
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(async_to_sync(request_identity_async), **kwargs).result()


def test_async_identity_matches_the_sync_one(token_service, rbac_resolver):
    rbac_resolver.set("u-a", "t-1", ["order.read"])
    bearer = token_service.bearer(sub="u-a", jti="jti-async")
    sync = request_identity(authorization=bearer, match=_match("order.read"))
    first = _async_identity(authorization=bearer, match=_match("order.read"))  # cold: thread paths
    again = _async_identity(authorization=bearer, match=_match("order.read"))  # warm: local layers
    assert sync == first == again
    with pytest.raises(PermissionDenied):
        _async_identity(authorization=bearer, match=_match("order.write"))


def test_async_identity_refuses_a_revoked_token(token_service):
    bearer = token_service.bearer(permissions=["order.read"], jti="jti-async-revoked")
    assert _async_identity(authorization=bearer, match=_match())
    token_revoke(jti="jti-async-revoked")
    with pytest.raises(NotAuthenticated):
        _async_identity(authorization=bearer, match=_match())


def test_a_warm_async_identity_never_leaves_the_loop(token_service):
    """Warm (signature, revocation, permissions cached locally): no thread hop."""
    bearer = token_service.bearer(permissions=["order.read"], jti="jti-warm")
    _async_identity(authorization=bearer, match=_match())

    async def main() -> None:
        loop = asyncio.get_running_loop()
        calls: list[object] = []
        original = loop.run_in_executor

        def spy(*args):  # noqa: ANN002, ANN202
            calls.append(args)
            return original(*args)

        loop.run_in_executor = spy  # type: ignore[method-assign]
        await request_identity_async(authorization=bearer, match=_match())
        assert calls == []

    with ThreadPoolExecutor(1) as pool:  # see _async_identity
        pool.submit(async_to_sync(main)).result()


def test_a_cold_async_identity_runs_its_blocking_work_on_the_bounded_database_pool(
    token_service, rbac_resolver, monkeypatch
):
    """Signature check, revocation fallback and the RBAC resolver: each on a `gateway-db` thread
    (gateway/services/db_pool.py, GATEWAY_DB_THREADS), never the loop's default executor."""
    import threading

    from gateway.services import rbac, revocation, tokens

    threads: dict[str, str] = {}

    def recorded(name, function):  # noqa: ANN001, ANN202
        def call(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
            threads[name] = threading.current_thread().name
            return function(*args, **kwargs)

        return call

    monkeypatch.setattr(tokens, "token_verify", recorded("verify", tokens.token_verify))
    monkeypatch.setattr(revocation, "token_is_revoked", recorded("revoked", revocation.token_is_revoked))
    monkeypatch.setattr(rbac, "_resolve", recorded("rbac", rbac._resolve))
    rbac_resolver.set("u-cold", "t-1", ["order.read"])
    bearer = token_service.bearer(sub="u-cold", jti="jti-cold-pool")

    identity = _async_identity(authorization=bearer, match=_match("order.read"))

    assert identity.user_id == "u-cold" and "order.read" in identity.permissions
    assert set(threads) == {"verify", "revoked", "rbac"}
    assert all(name.startswith("gateway-db") for name in threads.values()), threads
