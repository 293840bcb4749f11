"""Forwarding headers (issue 13 item 6): what the upstream learns about the client, through the
production server, and the pure rules of `gateway.services.headers` behind it."""

from __future__ import annotations

import pytest
import requests

from gateway.services.headers import (
    client_address,
    forwarded_element,
    response_headers,
    trusted_proxies,
    upstream_request_headers,
)
from gateway.types import Identity
from tests.gateway.proxy_support import proxy_route
from tests.support.servers import Reply

SPOOFED = {
    "Forwarded": "for=10.9.9.9;host=evil.example;proto=https",
    "X-Real-IP": "10.9.9.9",
    "X-Forwarded-For": "203.0.113.9",
    "X-Forwarded-Proto": "https",
    "X-Forwarded-Host": "evil.example",
}


@pytest.fixture
def upstream(http_server_factory):
    return http_server_factory(lambda request: Reply(200, b"ok"))


@pytest.mark.django_db(transaction=True)
def test_an_untrusted_client_cannot_tell_the_upstream_who_it_is(upstream, gateway_process_factory):
    proxy_route(upstream.url, path="/echo/**")
    gateway = gateway_process_factory()  # FORWARDED_ALLOW_IPS unset: the gateway is the edge
    host = gateway.removeprefix("http://")

    response = requests.get(f"{gateway}/gw/echo/a", headers=SPOOFED, timeout=10)

    assert response.status_code == 200
    (seen,) = upstream.requests
    assert seen.header_all("X-Forwarded-For") == ["127.0.0.1"]
    assert seen.header_all("X-Forwarded-Proto") == ["http"]
    assert seen.header_all("X-Forwarded-Host") == [host]
    assert seen.header_all("X-Real-IP") == ["127.0.0.1"]
    assert seen.header_all("Forwarded") == [f'for=127.0.0.1;host="{host}";proto=http']
    assert "10.9.9.9" not in str(seen.headers) and "evil.example" not in str(seen.headers)


@pytest.mark.django_db(transaction=True)
def test_a_trusted_proxy_in_front_has_its_chain_extended(upstream, gateway_process_factory):
    proxy_route(upstream.url, path="/echo/**")
    gateway = gateway_process_factory({"FORWARDED_ALLOW_IPS": "127.0.0.0/8"})
    host = gateway.removeprefix("http://")

    response = requests.get(
        f"{gateway}/gw/echo/a",
        headers={**SPOOFED, "X-Forwarded-For": "198.51.100.4, 10.0.0.1"},
        timeout=10,
    )

    assert response.status_code == 200
    (seen,) = upstream.requests
    assert seen.header_all("X-Forwarded-For") == ["198.51.100.4, 10.0.0.1, 127.0.0.1"]
    assert seen.header_all("X-Forwarded-Host") == ["evil.example"]  # the proxy's word, believed
    assert seen.header_all("Forwarded") == [
        f'for=10.9.9.9;host=evil.example;proto=https, for=127.0.0.1;host="{host}";proto=https'
    ]
    # the right-most address that is not a trusted proxy (10.0.0.1 is not in 127.0.0.0/8)
    assert seen.header_all("X-Real-IP") == ["10.0.0.1"]


# --- The pure rules ----------------------------------------------------------------------------


def _headers(pairs, **kwargs):
    defaults = {
        "peer": "192.0.2.10",
        "scheme": "https",
        "host": "api.example",
        "identity": None,
        "correlation_id": "c-1",
        "trusted": trusted_proxies(spec=[]),
    }
    return upstream_request_headers(client_headers=pairs, **(defaults | kwargs))


def _all(headers, name):
    return [value for key, value in headers if key.lower() == name.lower()]


def test_asgi_bytes_pairs_and_wsgi_str_pairs_give_the_same_headers():
    as_str = [
        ("Accept", "a/b"),
        ("X-Custom", "1"),
        ("X-Custom", "2"),
        ("Connection", "x-hop"),
        ("X-Hop", "1"),
    ]
    as_bytes = [(name.lower().encode(), value.encode("latin-1")) for name, value in as_str]

    from_wsgi = _headers(as_str)
    from_asgi = _headers(as_bytes)

    assert [(n.lower(), v) for n, v in from_wsgi] == [(n.lower(), v) for n, v in from_asgi]
    assert _all(from_wsgi, "X-Custom") == ["1", "2"]  # repeats stay repeated
    assert _all(from_wsgi, "X-Hop") == [] and _all(from_wsgi, "Connection") == []
    assert from_wsgi[0] == ("Host", "")


def test_identity_headers_replace_the_clients_copies():
    identity = Identity(user_id="u-1", tenant_id="t-1", permissions=frozenset({"b.read", "a.write"}))

    headers = _headers([("X-User-ID", "admin"), ("x-user-permissions", "everything")], identity=identity)

    assert _all(headers, "X-User-ID") == ["u-1"]
    assert _all(headers, "X-Tenant-ID") == ["t-1"]
    assert _all(headers, "X-User-Permissions") == ["a.write,b.read"]


def test_client_address_skips_trusted_hops_from_the_right():
    trusted = trusted_proxies(spec=["10.0.0.0/8", "::1"])

    assert client_address(peer="192.0.2.1", forwarded_for=["1.1.1.1"], trusted=trusted) == "192.0.2.1"
    assert client_address(peer="10.0.0.2", forwarded_for=["1.1.1.1, 10.0.0.5"], trusted=trusted) == "1.1.1.1"
    assert client_address(peer="::1", forwarded_for=["10.0.0.3"], trusted=trusted) == "10.0.0.3"
    assert client_address(peer="10.0.0.2", forwarded_for=[], trusted=trusted) == "10.0.0.2"
    assert "anything" in trusted_proxies(spec=["*"])
    assert "not-an-ip" not in trusted


def test_forwarded_element_quotes_what_is_not_a_token():
    assert forwarded_element(peer="2001:db8::1", host="h:8080", scheme="http") == (
        'for="[2001:db8::1]";host="h:8080";proto=http'
    )
    assert forwarded_element(peer="192.0.2.1", host='a"b', scheme="https") == (
        'for=192.0.2.1;host="a\\"b";proto=https'
    )


def test_response_headers_drop_hop_by_hop_and_keep_repeats():
    kept = response_headers(
        upstream_headers=[
            (b"set-cookie", b"a=1"),
            (b"set-cookie", b"b=2"),
            (b"connection", b"x-secret"),
            (b"x-secret", b"1"),
            (b"keep-alive", b"timeout=5"),
            (b"proxy-authenticate", b"Basic"),
        ]
    )
    assert kept == [("set-cookie", "a=1"), ("set-cookie", "b=2")]
