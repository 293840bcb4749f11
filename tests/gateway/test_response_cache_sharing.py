"""What the shared response cache may store and replay (issue 13 items 1 and 2, RFC 9111 §3,
§3.5, §4.1): through the production server, with an upstream that echoes the request."""

from __future__ import annotations

import gzip
import http.client
import itertools
from urllib.parse import urlsplit

import pytest

from tests.gateway.factories import RouteFactory, ServiceFactory
from tests.support.servers import Reply

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def echo(http_server_factory):
    """Answers `n=<request number> auth=<Authorization> cookie=<Cookie>`, gzipped (with
    `Vary: Accept-Encoding`) when the client accepts gzip; `echo.extra` adds response headers,
    `echo.vary = False` leaves Vary out."""
    counter = itertools.count(1)

    def handler(request):
        body = f"n={next(counter)} auth={request.header('Authorization')} cookie={request.header('Cookie')}"
        headers = [("Content-Type", "text/plain"), *server.extra]
        if "gzip" in (request.header("Accept-Encoding") or ""):
            headers.append(("Content-Encoding", "gzip"))
            if server.vary:
                headers.append(("Vary", "Accept-Encoding"))
            return Reply(200, gzip.compress(body.encode()), headers)
        if server.vary:
            headers.append(("Vary", "Accept-Encoding"))
        return Reply(200, body.encode(), headers)

    server = http_server_factory(handler)
    server.extra = []
    server.vary = True
    return server


@pytest.fixture
def gateway(echo, gateway_process_factory):
    service = ServiceFactory(targets=[echo.url])
    RouteFactory(
        path="/public/**", methods=["GET"], service=service, auth_required=False, cache_ttl_seconds=60
    )
    return urlsplit(gateway_process_factory()).netloc


def get(netloc: str, path: str, **headers: str) -> tuple[int, dict[str, str], bytes]:
    connection = http.client.HTTPConnection(netloc, timeout=10)
    connection.request("GET", path, headers={"Accept-Encoding": "identity", **headers})
    response = connection.getresponse()
    body = response.read()
    connection.close()
    return response.status, {k.lower(): v for k, v in response.getheaders()}, body


@pytest.mark.parametrize(
    "credentials",
    [{"Authorization": "Bearer secret-of-a"}, {"Cookie": "session=secret-of-a"}],
    ids=["authorization", "cookie"],
)
def test_a_request_with_credentials_is_never_replayed_to_someone_else(gateway, echo, credentials):
    status, _, first = get(gateway, "/gw/public/x", **credentials)
    assert status == 200 and b"secret-of-a" in first

    status, _, second = get(gateway, "/gw/public/x")  # client B, anonymous

    assert status == 200
    assert b"secret-of-a" not in second
    assert second.startswith(b"n=2 ")
    assert len(echo.requests) == 2


def test_a_cookie_request_is_not_served_from_the_cache_either(gateway, echo):
    get(gateway, "/gw/public/x")  # stored: anonymous
    _, _, with_cookie = get(gateway, "/gw/public/x", Cookie="session=s")
    assert with_cookie.startswith(b"n=2 ") and b"cookie=session=s" in with_cookie


def test_an_authorized_answer_marked_public_may_be_shared(gateway, echo):
    echo.extra.append(("Cache-Control", "public, max-age=60"))
    get(gateway, "/gw/public/x", Authorization="Bearer a")

    _, headers, again = get(gateway, "/gw/public/x")

    assert again.startswith(b"n=1 ") and "age" in headers


def test_a_request_saying_no_store_is_not_stored(gateway, echo):
    get(gateway, "/gw/public/x", **{"Cache-Control": "no-store"})
    _, _, again = get(gateway, "/gw/public/x")
    assert again.startswith(b"n=2 ")


def test_the_gzip_copy_goes_only_to_clients_that_accept_gzip(gateway, echo):
    status, headers, zipped = get(gateway, "/gw/public/x", **{"Accept-Encoding": "gzip"})
    assert status == 200 and headers["content-encoding"] == "gzip"

    _, plain_headers, plain = get(gateway, "/gw/public/x", **{"Accept-Encoding": "identity"})
    _, again_headers, zipped_again = get(gateway, "/gw/public/x", **{"Accept-Encoding": "gzip"})
    _, _, plain_again = get(gateway, "/gw/public/x", **{"Accept-Encoding": "identity"})

    assert "content-encoding" not in plain_headers and plain.startswith(b"n=2 ")
    assert again_headers["content-encoding"] == "gzip" and gzip.decompress(zipped_again).startswith(b"n=1 ")
    assert plain_again.startswith(b"n=2 ")  # each variant cached under its own secondary key
    assert len(echo.requests) == 2


def test_an_encoded_answer_without_vary_is_not_served_to_a_client_that_did_not_ask(gateway, echo):
    echo.vary = False
    get(gateway, "/gw/public/x", **{"Accept-Encoding": "gzip"})

    _, headers, plain = get(gateway, "/gw/public/x", **{"Accept-Encoding": "identity"})

    assert "content-encoding" not in headers and plain.startswith(b"n=2 ")
