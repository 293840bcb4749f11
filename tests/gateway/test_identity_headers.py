"""Identity header values (issue 13 item 7): a signed claim that cannot travel as a header value
exactly as it is makes the token unacceptable (401), through the production server."""

from __future__ import annotations

import pytest
import requests

from gateway.services.headers import identity_value_is_safe
from tests.gateway.proxy_support import proxy_route
from tests.support.servers import Reply

pytestmark = pytest.mark.django_db(transaction=True)

UNSAFE_CLAIMS = {
    "permission with a comma": {"permissions": ["order.read", "order.write,admin"]},
    "permission with a space in a list": {"permissions": ["order.read", "a b"]},
    "non-Latin-1 sub": {"sub": "用户-1"},
    "Latin-1 but not ASCII sub": {"sub": "jürgen"},
    "sub with CR/LF": {"sub": "u-1\r\nX-User-Permissions: admin"},
    "tenant with CR/LF": {"tenant_id": "t-1\r\nX-Evil: 1"},
    "non-Latin-1 tenant": {"tenant_id": "租户"},
    "tenant with a comma": {"tenant_id": "t-1,t-2"},
    "sub with a quote": {"sub": 'u"1'},
    "overlong sub": {"sub": "u" * 300},
}


@pytest.fixture
def gateway(http_server_factory, token_service, rbac_resolver, gateway_process_factory):
    upstream = http_server_factory(lambda request: Reply(200, b"ok"))
    proxy_route(upstream.url, path="/me/**", methods=("GET",), auth_required=True)
    url = gateway_process_factory(token_service.env | rbac_resolver.env)
    return url, upstream


def test_claims_that_are_not_safe_header_values_are_refused_with_401(gateway, token_service):
    url, upstream = gateway
    for case, claims in UNSAFE_CLAIMS.items():
        claims = {"permissions": ["order.read"], **claims}

        response = requests.get(
            f"{url}/gw/me/x", headers={"Authorization": token_service.bearer(**claims)}, timeout=10
        )

        assert response.status_code == 401, (case, response.status_code, response.text)
        assert response.headers["Content-Type"] == "application/problem+json", case
        assert response.headers["WWW-Authenticate"] == 'Bearer error="invalid_token"', case
    assert upstream.requests == []


def test_ordinary_subjects_reach_the_upstream_exactly(gateway, token_service):
    url, upstream = gateway
    subjects = ["auth0|5f7c8ec7c33c6c004bbafe82", "user@example.com", "https://idp.example/u/1", "1234"]
    for sub in subjects:
        token = token_service.bearer(sub=sub, tenant_id=42, permissions=["order.read", "order:write"])
        response = requests.get(f"{url}/gw/me/x", headers={"Authorization": token}, timeout=10)
        assert response.status_code == 200, (sub, response.text)

    assert [seen.header("X-User-ID") for seen in upstream.requests] == subjects
    assert {seen.header("X-Tenant-ID") for seen in upstream.requests} == {"42"}
    assert {seen.header("X-User-Permissions") for seen in upstream.requests} == {"order.read,order:write"}


def test_resolved_permissions_that_are_not_safe_are_left_out(gateway, token_service, rbac_resolver):
    url, upstream = gateway
    rbac_resolver.set("u-1", "t-1", ["order.read", "order.write,admin", "bad\npermission"])

    response = requests.get(
        f"{url}/gw/me/x",
        headers={"Authorization": token_service.bearer(sub="u-1", tenant_id="t-1")},
        timeout=10,
    )

    assert response.status_code == 200, response.text
    assert upstream.requests[0].header_all("X-User-Permissions") == ["order.read"]


def test_the_safe_charset():
    assert identity_value_is_safe(value="auth0|abc:1/2@x.y=+~")
    for unsafe in ("", "a,b", "a b", 'a"b', "a\\b", "a\tb", "é", "a\x00", "a\x7f", "x" * 257):
        assert not identity_value_is_safe(value=unsafe), unsafe
