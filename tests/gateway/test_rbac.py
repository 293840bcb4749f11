"""RBAC: permissions from the token or the resolver, cached in Redis, invalidated everywhere."""

from __future__ import annotations

import pytest
from django.core.cache import cache
from django.core.management import call_command

from common.errors import PermissionDenied, ServiceUnavailable
from common.local_cache import reset_all_local_caches
from gateway.services.auth import request_identity
from gateway.types import ResolvedRoute, RouteMatch
from tests.support.redis_json import redis_json, redis_json_set  # noqa: F401

pytestmark = pytest.mark.django_db


def _match(required_permission: str = "", **route_fields) -> RouteMatch:
    route = ResolvedRoute(
        id=1,
        methods=("GET",),
        path="/orders/**",
        service="orders.test",
        targets=("http://127.0.0.1:9",),
        required_permission=required_permission,
        **route_fields,
    )
    return RouteMatch(route=route, params={}, path="/orders/1")


def test_permissions_claim_is_used_without_asking_the_resolver(token_service, rbac_resolver):
    identity = request_identity(
        authorization=token_service.bearer(permissions=["order.read"]), match=_match("order.read")
    )

    assert identity.permissions == frozenset({"order.read"})
    assert rbac_resolver.call_count == 0


def test_missing_permission_in_claim_is_403(token_service, rbac_resolver):
    with pytest.raises(PermissionDenied) as caught:
        request_identity(
            authorization=token_service.bearer(permissions=["order.read"]), match=_match("order.write")
        )
    assert caught.value.to_response().status_code == 403


def test_resolver_grants_and_its_answer_is_cached_in_redis(token_service, rbac_resolver):
    rbac_resolver.set("u-1", "t-1", ["order.read", "order.write"])
    bearer = token_service.bearer(sub="u-1", tenant_id="t-1")

    first = request_identity(authorization=bearer, match=_match("order.write"))
    reset_all_local_caches()  # as another instance would: only Redis is shared
    second = request_identity(authorization=bearer, match=_match("order.write"))

    assert first.permissions == second.permissions == frozenset({"order.read", "order.write"})
    assert rbac_resolver.calls == [("u-1", "t-1")]
    entry = redis_json("rbac:u-1:t-1")
    assert entry["user_id"] == "u-1" and entry["tenant_id"] == "t-1"
    assert sorted(entry["permissions"]) == ["order.read", "order.write"]
    assert entry["resolved_at"] > 0
    assert cache.ttl("rbac:u-1:t-1") <= 300


def test_resolver_without_the_permission_is_403(token_service, rbac_resolver):
    rbac_resolver.set("u-1", "t-1", ["order.read"])

    with pytest.raises(PermissionDenied):
        request_identity(authorization=token_service.bearer(sub="u-1"), match=_match("order.write"))


def test_permissions_are_per_tenant(token_service, rbac_resolver):
    rbac_resolver.set("u-1", "t-1", ["order.read"])
    rbac_resolver.set("u-1", "t-2", [])

    request_identity(
        authorization=token_service.bearer(sub="u-1", tenant_id="t-1"), match=_match("order.read")
    )
    with pytest.raises(PermissionDenied):
        request_identity(
            authorization=token_service.bearer(sub="u-1", tenant_id="t-2"), match=_match("order.read")
        )


def test_resolver_down_and_nothing_cached_is_503_never_an_allow(token_service, rbac_resolver):
    rbac_resolver.fail(503)

    with pytest.raises(ServiceUnavailable) as caught:
        request_identity(authorization=token_service.bearer(sub="u-1"), match=_match())
    assert caught.value.to_response().status_code == 503


def test_resolver_unreachable_is_503(token_service, settings):
    from tests.support.servers import free_port

    settings.RBAC_RESOLVER_URL = f"http://127.0.0.1:{free_port()}/permissions"

    with pytest.raises(ServiceUnavailable):
        request_identity(authorization=token_service.bearer(sub="u-1"), match=_match())


def test_resolver_down_with_a_cached_answer_still_serves(token_service, rbac_resolver):
    rbac_resolver.set("u-1", "t-1", ["order.read"])
    bearer = token_service.bearer(sub="u-1")
    request_identity(authorization=bearer, match=_match("order.read"))
    rbac_resolver.fail(503)
    reset_all_local_caches()

    identity = request_identity(authorization=bearer, match=_match("order.read"))

    assert identity.permissions == frozenset({"order.read"})


def test_invalidate_command_for_one_user_makes_the_next_request_see_new_permissions(
    token_service, rbac_resolver
):
    rbac_resolver.set("u-1", "t-1", ["order.read"])
    rbac_resolver.set("u-2", "t-1", ["order.read"])
    request_identity(authorization=token_service.bearer(sub="u-1"), match=_match())
    request_identity(authorization=token_service.bearer(sub="u-2"), match=_match())
    rbac_resolver.set("u-1", "t-1", ["order.read", "order.write"])

    call_command("rbac_invalidate", user="u-1", tenant="t-1")

    identity = request_identity(authorization=token_service.bearer(sub="u-1"), match=_match("order.write"))
    assert "order.write" in identity.permissions
    assert redis_json("rbac:u-2:t-1") is not None  # the other user's entry stays
    assert rbac_resolver.calls.count(("u-1", "t-1")) == 2


def test_invalidate_all(token_service, rbac_resolver):
    for user in ("u-1", "u-2"):
        rbac_resolver.set(user, "t-1", [])
        request_identity(authorization=token_service.bearer(sub=user), match=_match())

    call_command("rbac_invalidate", all=True)

    assert redis_json("rbac:u-1:t-1") is None and redis_json("rbac:u-2:t-1") is None
    request_identity(authorization=token_service.bearer(sub="u-1"), match=_match())
    assert rbac_resolver.call_count == 3


def test_invalidate_command_needs_a_scope():
    from django.core.management.base import CommandError

    with pytest.raises(CommandError):
        call_command("rbac_invalidate", user="u-1")


def test_redis_down_falls_back_to_the_resolver_and_stays_correct(token_service, rbac_resolver, settings):
    from tests.support.servers import free_port

    rbac_resolver.set("u-1", "t-1", ["order.read"])
    settings.REDIS_URL = f"redis://127.0.0.1:{free_port()}/0"
    settings.CACHES = {
        "default": {
            **settings.CACHES["default"],
            "LOCATION": settings.REDIS_URL,
        }
    }

    allowed = request_identity(authorization=token_service.bearer(sub="u-1"), match=_match("order.read"))
    with pytest.raises(PermissionDenied):
        request_identity(authorization=token_service.bearer(sub="u-1"), match=_match("order.write"))

    assert allowed.user_id == "u-1"
    assert rbac_resolver.call_count >= 1


def test_cache_stats_count_auth_hits_and_misses_by_kind(token_service, rbac_resolver):
    from gateway.services.cache_stats import cache_stats

    before = cache_stats()
    bearer = token_service.bearer(sub="u-1", jti="jti-stats")
    for _ in range(3):
        request_identity(authorization=bearer, match=_match())
    after = cache_stats()

    for kind in ("rbac", "revoked", "jwks"):
        assert after[kind]["misses"] - before[kind]["misses"] == 1, kind
    for kind in ("rbac", "revoked"):  # the JWKS is not consulted again: the signature check is cached
        assert after[kind]["hits"] - before[kind]["hits"] == 2, kind
    assert after["rbac"]["size"] == 1 and after["revoked"]["size"] == 1 and after["jwks"]["size"] == 1


def test_gateway_cache_flush_rbac_makes_every_layer_ask_the_resolver_again(
    token_service, rbac_resolver, django_capture_on_commit_callbacks
):
    bearer = token_service.bearer(sub="u-1")
    request_identity(authorization=bearer, match=_match())

    with django_capture_on_commit_callbacks(execute=True):
        call_command("gateway_cache", "flush", "--kind", "rbac")
    request_identity(authorization=bearer, match=_match())

    assert rbac_resolver.call_count == 2


def test_internal_rbac_updated_endpoint_for_one_user(client, token_service, rbac_resolver, settings):
    settings.GATEWAY_INTERNAL_TOKEN = "internal-secret"
    rbac_resolver.set("u-1", "t-1", [])
    bearer = token_service.bearer(sub="u-1")
    request_identity(authorization=bearer, match=_match())
    rbac_resolver.set("u-1", "t-1", ["order.write"])

    response = client.post(
        "/internal/rbac/updated",
        {"user_id": "u-1", "tenant_id": "t-1"},
        content_type="application/json",
        HTTP_AUTHORIZATION="Bearer internal-secret",
    )

    assert response.status_code == 202
    assert response.json() == {"event": "rbac.updated", "deleted": 1}
    assert "order.write" in request_identity(authorization=bearer, match=_match("order.write")).permissions


def test_internal_rbac_updated_endpoint_for_all(client, token_service, rbac_resolver, settings):
    settings.GATEWAY_INTERNAL_TOKEN = "internal-secret"
    for user in ("u-1", "u-2"):
        request_identity(authorization=token_service.bearer(sub=user), match=_match())

    response = client.post(
        "/internal/rbac/updated", {"all": True}, content_type="application/json",
        HTTP_AUTHORIZATION="Bearer internal-secret",
    )  # fmt: skip

    assert response.status_code == 202
    assert response.json()["deleted"] == 2
    assert redis_json("rbac:u-1:t-1") is None


@pytest.mark.parametrize("body", [{}, {"all": True, "user_id": "u-1"}])
def test_internal_rbac_updated_endpoint_needs_exactly_one_scope(client, settings, body):
    settings.GATEWAY_INTERNAL_TOKEN = "internal-secret"

    response = client.post(
        "/internal/rbac/updated",
        body,
        content_type="application/json",
        HTTP_AUTHORIZATION="Bearer internal-secret",
    )

    assert response.status_code == 400
    assert response["Content-Type"] == "application/problem+json"


def test_ids_containing_colons_do_not_share_a_cache_entry(token_service, rbac_resolver):
    # ("a:b", "c") and ("a", "b:c") would both be `rbac:a:b:c` without escaping.
    rbac_resolver.set("a:b", "c", ["order.write"])
    rbac_resolver.set("a", "b:c", [])
    granted = request_identity(
        authorization=token_service.bearer(sub="a:b", tenant_id="c"), match=_match("order.write")
    )
    reset_all_local_caches()  # another instance: only Redis is shared

    with pytest.raises(PermissionDenied):
        request_identity(
            authorization=token_service.bearer(sub="a", tenant_id="b:c"), match=_match("order.write")
        )

    assert granted.user_id == "a:b"
    assert rbac_resolver.calls == [("a:b", "c"), ("a", "b:c")]


def test_a_cached_entry_for_another_user_or_tenant_is_a_miss(token_service, rbac_resolver):
    from gateway.services.rbac import rbac_cache_key

    # given: the entry under u-1/t-1's key belongs to someone else (a collision, an old key format)
    redis_json_set(
        rbac_cache_key(user_id="u-1", tenant_id="t-1"),
        {"user_id": "u-9", "tenant_id": "t-1", "permissions": ["order.write"], "resolved_at": 1.0},
        300,
    )
    rbac_resolver.set("u-1", "t-1", ["order.read"])

    with pytest.raises(PermissionDenied):
        request_identity(authorization=token_service.bearer(sub="u-1"), match=_match("order.write"))

    assert rbac_resolver.calls == [("u-1", "t-1")]
    assert redis_json("rbac:u-1:t-1")["user_id"] == "u-1"  # replaced by the resolver's answer
