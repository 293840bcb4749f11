"""The project's own APIs take the gateway's Bearer tokens through the same verification."""

from __future__ import annotations

import pytest

from tests.gateway.proxy_support import proxy_route
from tests.support.servers import Reply

pytestmark = pytest.mark.django_db


def test_valid_token_lists_the_callers_orders(client, token_service):
    response = client.get("/api/orders", **token_service.auth_header(sub="u-1", tenant_id="t-1"))

    assert response.status_code == 200


def test_missing_token_is_401_with_a_bare_challenge(client, token_service):
    response = client.get("/api/orders")

    assert response.status_code == 401
    assert response["Content-Type"] == "application/problem+json"
    assert response["WWW-Authenticate"] == "Bearer"


@pytest.mark.parametrize("kind", ["alg none", "hs256", "expired", "other audience", "garbage", "no sub"])
def test_invalid_token_is_401_invalid_token(client, token_service, kind):
    token = {
        "alg none": token_service.forge_alg_none,
        "hs256": token_service.forge_hs256_with_public_key,
        "expired": lambda: token_service.token(expires_in=-600),
        "other audience": lambda: token_service.token(aud="x"),
        "garbage": lambda: "garbage",
        "no sub": lambda: token_service.token(sub=None),
    }[kind]()

    response = client.get("/api/orders", HTTP_AUTHORIZATION=f"Bearer {token}")

    assert response.status_code == 401
    assert response["Content-Type"] == "application/problem+json"
    assert response["WWW-Authenticate"] == 'Bearer error="invalid_token"'


def test_revoked_token_is_refused_on_the_api_too(client, token_service, django_capture_on_commit_callbacks):
    from django.core.management import call_command

    headers = token_service.auth_header(jti="jti-api")
    assert client.get("/api/orders", **headers).status_code == 200
    with django_capture_on_commit_callbacks(execute=True):
        call_command("revoke_token", "jti-api")

    assert client.get("/api/orders", **headers).status_code == 401


@pytest.mark.django_db(transaction=True)
def test_one_token_works_at_the_gateway_and_on_the_api(gw_server, token_service, http_server_factory):
    gw = gw_server(token_service.env)
    upstream = http_server_factory(lambda request: Reply(200, b"ok"))
    proxy_route(upstream.url, path="/things/**", auth_required=True)
    headers = token_service.auth_header(sub="u-1", permissions=[])

    assert gw.get("/gw/things/1", **headers).status_code == 200
    assert gw.get("/api/orders", **headers).status_code == 200
    assert upstream.requests[0].header("X-User-ID") == "u-1"
