"""Auth on the proxy path `/gw/...`: what clients and upstreams see, in one process and across several."""

from __future__ import annotations

import time

import pytest
import requests

from tests.gateway.proxy_support import proxy_route
from tests.support.servers import Reply, free_port

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def upstream(http_server_factory):
    return http_server_factory(
        lambda request: Reply(200, b'{"ok":true}', [("Content-Type", "application/json")])
    )


@pytest.fixture
def secured(upstream):
    """GET /gw/orders/** requiring `order.read`; GET /gw/users/{user_id} with an ownership condition."""
    proxy_route(
        upstream.url,
        path="/orders/**",
        methods=("GET", "POST"),
        auth_required=True,
        required_permission="order.read",
    )
    proxy_route(
        upstream.url,
        path="/users/{user_id}",
        methods=("GET",),
        auth_required=True,
        condition={"user_id": "{{X-User-ID}}"},
    )
    proxy_route(upstream.url, path="/public/**", methods=("GET",), auth_required=False)
    return upstream


def _invalid_tokens(token_service) -> dict[str, str]:
    from tests.support.tokens import TokenService  # noqa: F401  (types only)

    return {
        "alg none": token_service.forge_alg_none(),
        "hs256 with the public key": token_service.forge_hs256_with_public_key(),
        "wrong signature": _resigned(token_service),
        "missing sub": token_service.token(sub=None, permissions=["order.read"]),
        "expired": token_service.token(permissions=["order.read"], expires_in=-3600),
        "other issuer": token_service.token(permissions=["order.read"], iss="https://evil.example"),
        "other audience": token_service.token(permissions=["order.read"], aud="someone-else"),
        "garbage": "not-a-jwt",
        "unknown kid": token_service.token(permissions=["order.read"], kid="no-such-key"),
    }


def _resigned(token_service) -> str:
    header, payload, _ = token_service.token(permissions=["order.read"]).split(".")
    _, _, other_signature = token_service.token(sub="someone-else").split(".")
    return f"{header}.{payload}.{other_signature}"


def test_every_invalid_token_is_401_and_never_reaches_upstream(gw_server, token_service, secured):
    gw = gw_server(token_service.env)
    for case, token in _invalid_tokens(token_service).items():
        response = gw.get("/gw/orders/1", HTTP_AUTHORIZATION=f"Bearer {token}")

        assert response.status_code == 401, case
        assert response["Content-Type"] == "application/problem+json", case
        assert response["WWW-Authenticate"] == 'Bearer error="invalid_token"', case
        assert response.json()["status"] == 401, case
    assert secured.requests == []


def test_missing_token_is_401_with_a_bare_challenge(gw_server, token_service, secured):
    gw = gw_server(token_service.env)
    response = gw.get("/gw/orders/1")

    assert response.status_code == 401
    assert response["WWW-Authenticate"] == "Bearer"
    assert secured.requests == []


def test_revoked_token_is_401(gw_server, token_service, secured):
    gw = gw_server(token_service.env)
    from django.core.management import call_command

    headers = token_service.auth_header(permissions=["order.read"], jti="jti-x")
    assert gw.get("/gw/orders/1", **headers).status_code == 200  # "not revoked" now held by the server
    call_command("revoke_token", "jti-x")

    # the revocation reaches the server's local layer through the invalidation bus (milliseconds)
    answers = []
    _until(lambda: answers.append(gw.get("/gw/orders/1", **headers)) or answers[-1].status_code == 401, 1.5)
    response = answers[-1]

    assert response.status_code == 401
    assert response["WWW-Authenticate"] == 'Bearer error="invalid_token"'
    assert {answer.status_code for answer in answers[:-1]} <= {200}
    assert len(secured.requests) == len(answers)  # the first request and any answered before the message


def test_identity_reaches_upstream_and_spoofed_headers_are_replaced(gw_server, token_service, secured):
    gw = gw_server(token_service.env)
    response = gw.get(
        "/gw/orders/1",
        HTTP_X_USER_ID="admin",
        HTTP_X_TENANT_ID="other-tenant",
        HTTP_X_USER_PERMISSIONS="everything",
        **token_service.auth_header(sub="u-1", tenant_id="t-1", permissions=["order.read", "order.write"]),
    )

    assert response.status_code == 200
    seen = secured.requests[0]
    assert seen.header_all("X-User-ID") == ["u-1"]
    assert seen.header_all("X-Tenant-ID") == ["t-1"]
    assert seen.header_all("X-User-Permissions") == ["order.read,order.write"]


def test_route_without_auth_forwards_no_identity_even_with_a_token(gw_server, token_service, secured):
    gw = gw_server(token_service.env)
    response = gw.get(
        "/gw/public/x", HTTP_X_USER_ID="admin", **token_service.auth_header(sub="u-1", permissions=["a"])
    )

    assert response.status_code == 200
    seen = secured.requests[0]
    assert seen.header("X-User-ID") is None
    assert seen.header("X-Tenant-ID") is None
    assert seen.header("X-User-Permissions") is None


def test_route_without_auth_ignores_even_a_garbage_token(gw_server, secured):
    gw = gw_server()
    assert gw.get("/gw/public/x", HTTP_AUTHORIZATION="Bearer garbage").status_code == 200


def test_missing_permission_is_403_and_never_reaches_upstream(gw_server, token_service, secured):
    gw = gw_server(token_service.env)
    response = gw.get("/gw/orders/1", **token_service.auth_header(permissions=["order.write"]))

    assert response.status_code == 403
    assert response["Content-Type"] == "application/problem+json"
    assert secured.requests == []


def test_permissions_from_the_resolver_when_the_token_has_none(
    gw_server, token_service, rbac_resolver, secured
):
    gw = gw_server(token_service.env | rbac_resolver.env)
    rbac_resolver.set("u-1", "t-1", ["order.read"])

    allowed = gw.get("/gw/orders/1", **token_service.auth_header(sub="u-1", tenant_id="t-1"))
    refused = gw.get("/gw/orders/1", **token_service.auth_header(sub="u-2", tenant_id="t-1"))

    assert (allowed.status_code, refused.status_code) == (200, 403)
    assert secured.requests[0].header("X-User-Permissions") == "order.read"


def test_resolver_down_is_503_never_an_allow(gw_server, token_service, rbac_resolver, secured):
    gw = gw_server(token_service.env | rbac_resolver.env)
    rbac_resolver.fail(503)

    response = gw.get("/gw/orders/1", **token_service.auth_header(sub="u-1"))

    assert response.status_code == 503
    assert response["Content-Type"] == "application/problem+json"
    assert secured.requests == []


def test_condition_on_a_path_parameter(gw_server, token_service, secured):
    gw = gw_server(token_service.env)
    own = gw.get("/gw/users/u-1", **token_service.auth_header(sub="u-1", permissions=[]))
    other = gw.get("/gw/users/u-2", **token_service.auth_header(sub="u-1", permissions=[]))

    assert (own.status_code, other.status_code) == (200, 403)
    assert len(secured.requests) == 1


def test_condition_on_a_query_parameter(gw_server, token_service, upstream):
    gw = gw_server(token_service.env)
    proxy_route(
        upstream.url,
        path="/reports",
        methods=("GET",),
        auth_required=True,
        condition={"tenant": "{{X-Tenant-ID}}"},
    )
    headers = token_service.auth_header(sub="u-1", tenant_id="acme", permissions=[])

    own = gw.get("/gw/reports?tenant=acme&page=2", **headers)
    other = gw.get("/gw/reports?tenant=globex", **headers)

    assert (own.status_code, other.status_code) == (200, 403)
    assert [request.path for request in upstream.requests] == ["/reports?tenant=acme&page=2"]


# --- several server processes -------------------------------------------------------------------


def _secured_route(upstream_url: str) -> None:
    proxy_route(
        upstream_url,
        path="/orders/**",
        methods=("GET",),
        auth_required=True,
        required_permission="order.read",
    )


def _until(predicate, timeout: float) -> float:
    """Seconds until `predicate()` held (polling), or fail after `timeout`."""
    started = time.monotonic()
    while True:
        if predicate():
            return time.monotonic() - started
        if time.monotonic() - started > timeout:
            raise AssertionError(f"not within {timeout} s")
        time.sleep(0.02)


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_revocation_reaches_every_instance_within_a_second(upstream, token_service, gateway_process_factory):
    from django.core.management import call_command

    _secured_route(upstream.url)
    gateways = [gateway_process_factory(token_service.env) for _ in range(2)]
    authorization = {"Authorization": token_service.bearer(permissions=["order.read"], jti="jti-shared")}
    for gateway in gateways:  # warm: "not revoked" now cached in Redis and in each process
        for _ in range(3):
            assert (
                requests.get(f"{gateway}/gw/orders/1", headers=authorization, timeout=10).status_code == 200
            )

    call_command("revoke_token", "jti-shared", "--ttl", "600")
    revoked_at = time.monotonic()

    for gateway in gateways:
        _until(
            lambda gateway=gateway: (
                requests.get(f"{gateway}/gw/orders/1", headers=authorization, timeout=10).status_code == 401
            ),
            timeout=max(0.0, 1.0 - (time.monotonic() - revoked_at)) + 0.5,  # 1 s + loaded-machine margin
        )
    response = requests.get(f"{gateways[1]}/gw/orders/1", headers=authorization, timeout=10)
    assert response.headers["WWW-Authenticate"] == 'Bearer error="invalid_token"'


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_rbac_update_and_key_rotation_reach_another_instance(
    upstream, token_service, rbac_resolver, gateway_process_factory
):
    from django.core.management import call_command

    from gateway.services.jwks import jwks_refresh

    _secured_route(upstream.url)
    gateway = gateway_process_factory(token_service.env | rbac_resolver.env)
    rbac_resolver.set("u-1", "t-1", [])
    old_token = {"Authorization": token_service.bearer(sub="u-1", tenant_id="t-1")}
    assert requests.get(f"{gateway}/gw/orders/1", headers=old_token, timeout=10).status_code == 403

    # rbac.updated: the instance holds the old answer locally until told
    rbac_resolver.set("u-1", "t-1", ["order.read"])
    call_command("rbac_invalidate", user="u-1", tenant="t-1")
    _until(
        lambda: requests.get(f"{gateway}/gw/orders/1", headers=old_token, timeout=10).status_code == 200, 1.5
    )

    # jwt.jwks.rotated: the old key leaves the JWKS; the instance stops accepting it
    token_service.rotate()
    jwks_refresh()
    _until(
        lambda: requests.get(f"{gateway}/gw/orders/1", headers=old_token, timeout=10).status_code == 401, 1.5
    )
    new_token = {"Authorization": token_service.bearer(sub="u-1", tenant_id="t-1")}
    assert requests.get(f"{gateway}/gw/orders/1", headers=new_token, timeout=10).status_code == 200


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_instance_with_redis_down_still_authenticates_correctly(
    upstream, token_service, rbac_resolver, gateway_process_factory
):
    from django.core.management import call_command

    _secured_route(upstream.url)
    rbac_resolver.set("u-1", "t-1", ["order.read"])
    call_command("revoke_token", "jti-revoked", "--ttl", "600")
    gateway = gateway_process_factory(
        token_service.env | rbac_resolver.env | {"REDIS_URL": f"redis://127.0.0.1:{free_port()}/0"}
    )

    def get(**claims) -> int:
        headers = {"Authorization": token_service.bearer(sub="u-1", tenant_id="t-1", **claims)}
        return requests.get(f"{gateway}/gw/orders/1", headers=headers, timeout=10).status_code

    assert get() == 200  # JWKS from the token service, permissions from the resolver
    assert get(jti="jti-revoked") == 401  # the revocation from the database
    assert get(iss="https://evil.example") == 401
    rbac_resolver.set("u-1", "t-1", [])
    assert get(permissions=["something.else"]) == 403
    assert len(upstream.requests) == 1
