"""Request bodies whose framing lies (issue 13 items 4 and 9), through the production server:
a body shorter than its Content-Length and a malformed or aborted chunked body are 400
problem+json, never reach the upstream and never complete an Idempotency-Key."""

from __future__ import annotations

import http.client
import json
import socket
from urllib.parse import urlsplit

import pytest
import requests

from tests.gateway.proxy_support import proxy_route
from tests.support.servers import Reply

pytestmark = pytest.mark.django_db(transaction=True)

FULL = b'{"email": "ada@example.com", "n": 12345678}'


def _raw(netloc: str, head: bytes, body: bytes, *, close_write: bool) -> tuple[int, dict, bytes]:
    """(status, headers, body); status 0 when the server closed without answering, which it
    may do for a client that ended its side before the body was complete (config/server)."""
    host, port = netloc.split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(head + body)
        if close_write:
            sock.shutdown(socket.SHUT_WR)  # FIN: the client sends nothing more
        response = http.client.HTTPResponse(sock)
        try:
            response.begin()
        except http.client.RemoteDisconnected:
            return 0, {}, b""
        return response.status, {k.title(): v for k, v in response.getheaders()}, response.read()


def _refused_or_unanswered(status: int, headers: dict, body: bytes) -> None:
    if status == 0:  # the client left: nobody to answer, nothing forwarded (asserted by callers)
        return
    assert 400 <= status < 500
    assert headers["Content-Type"] == "application/problem+json"
    assert "type" in json.loads(body)


def test_truncated_upload_never_reaches_the_upstream_nor_completes_its_key(
    gateway_process_factory, http_server_factory
):
    upstream = http_server_factory(lambda request: Reply(201, request.body))
    proxy_route(upstream.url, path="/register", idempotency="required")
    base = gateway_process_factory()
    netloc = urlsplit(base).netloc
    assert len(FULL) == 43
    head = (
        b"POST /gw/register HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        b"Idempotency-Key: trunc-1\r\nContent-Length: 43\r\nConnection: close\r\n\r\n"
    )

    status, headers, body = _raw(netloc, head, FULL[:20], close_write=True)

    _refused_or_unanswered(status, headers, body)
    assert upstream.requests == []
    retry = requests.post(
        f"{base}/gw/register",
        data=FULL,
        headers={"Content-Type": "application/json", "Idempotency-Key": "trunc-1"},
        timeout=10,
    )
    assert retry.status_code == 201 and retry.content == FULL
    assert [r.body for r in upstream.requests] == [FULL]


@pytest.mark.parametrize(
    ("chunks", "close_write"),
    [
        (b"zz\r\nhello\r\n0\r\n\r\n", False),  # not a chunk size
        (b"5\r\nhelloXX0\r\n\r\n", False),  # chunk without its CRLF
        (b"10\r\nonly-part", True),  # aborted mid-chunk
        (b"5\r\nhello\r\n", True),  # no last chunk
    ],
)
def test_malformed_or_aborted_chunked_body_is_a_4xx_problem(
    gateway_process_factory, http_server_factory, chunks, close_write
):
    upstream = http_server_factory(lambda request: Reply(201, request.body))
    proxy_route(upstream.url, path="/upload")
    netloc = urlsplit(gateway_process_factory()).netloc
    head = (
        b"POST /gw/upload HTTP/1.1\r\nHost: 127.0.0.1\r\nTransfer-Encoding: chunked\r\n"
        b"Connection: close\r\n\r\n"
    )

    status, headers, body = _raw(netloc, head, chunks, close_write=close_write)

    if close_write:
        _refused_or_unanswered(status, headers, body)
    else:  # the client is still there: it gets a problem+json answer
        assert 400 <= status < 500 and headers["Content-Type"] == "application/problem+json"
        assert "type" in json.loads(body)
    assert upstream.requests == []
