"""Proxying (SPEC §3 "Proxying"): what reaches the upstream and what comes back to the client.

Every test goes through the production server process (`gw`, tests/support/gateway_server.py,
or a process of its own from gateway_process_factory).
"""

from __future__ import annotations

import http.client
import json

import pytest
import requests

from tests.gateway.proxy_support import proxy_route
from tests.support.servers import Reply, free_port

pytestmark = pytest.mark.django_db(transaction=True)


# --- Through the real server --------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_request_through_the_server_reaches_upstream_as_sent_and_errors_are_problems(
    http_server_factory, gateway_process_factory
):
    # given
    upstream = http_server_factory(lambda request: Reply(200, b"ok"))
    proxy_route(upstream.url, path="/echo/**")
    proxy_route(f"http://127.0.0.1:{free_port()}", path="/down", retry_count=0)
    gateway = gateway_process_factory()
    host = gateway.removeprefix("http://")

    # when: spoofed identity and forwarding headers, a hop-by-hop header named in Connection
    response = requests.post(
        f"{gateway}/gw/echo/a%2Fb/c?q=a%20b&tag=x&tag=y&e=",
        data=b'{"n": 1}',
        headers={
            "Content-Type": "application/json",
            "Connection": "keep-alive, X-Hop-Secret",
            "X-Hop-Secret": "must-not-pass",
            "Keep-Alive": "timeout=5",
            "Proxy-Authorization": "Basic Zm9vOmJhcg==",
            "TE": "trailers",
            "Proxy": "http://attacker.example:3128",
            "X-User-ID": "admin",
            "X-Tenant-ID": "other-tenant",
            "X-User-Permissions": "everything",
            "X-Forwarded-For": "203.0.113.9",
            "X-Forwarded-Proto": "https",
            "X-Forwarded-Host": "evil.example",
            "X-Correlation-ID": "corr-123",
            "X-Custom": "kept",
        },
        timeout=10,
    )

    # then
    assert response.status_code == 200, response.text
    assert response.headers["X-Correlation-ID"] == "corr-123"
    (seen,) = upstream.requests
    assert seen.method == "POST"
    assert seen.path == "/echo/a%2Fb/c?q=a%20b&tag=x&tag=y&e="  # byte for byte, %2F kept
    assert seen.body == b'{"n": 1}'
    assert seen.header("Content-Type") == "application/json"
    assert seen.header("Host") == f"127.0.0.1:{upstream.port}"
    assert seen.header("X-Forwarded-For") == "127.0.0.1"  # an untrusted client's chain is dropped
    assert seen.header("X-Forwarded-Proto") == "http"
    assert seen.header("X-Forwarded-Host") == host
    assert seen.header("X-Correlation-ID") == "corr-123"
    assert seen.header("X-Custom") == "kept"
    for dropped in ("X-Hop-Secret", "Keep-Alive", "Proxy-Authorization", "TE", "Proxy", "Transfer-Encoding"):
        assert seen.header(dropped) is None, dropped
    for identity in ("X-User-ID", "X-Tenant-ID", "X-User-Permissions"):
        assert seen.header(identity) is None, identity

    # and an upstream that is down is a 502 problem carrying the client's request id
    down = requests.get(f"{gateway}/gw/down", headers={"X-Request-ID": "req-9"}, timeout=10)
    assert down.status_code == 502
    assert down.headers["Content-Type"] == "application/problem+json"
    assert down.json()["correlation_id"] == "req-9"
    assert down.headers["X-Correlation-ID"] == "req-9"


@pytest.mark.django_db(transaction=True)
def test_response_through_the_server_keeps_repeated_headers_and_drops_hop_by_hop(
    http_server_factory, gateway_process_factory
):
    # given
    upstream = http_server_factory(
        lambda request: Reply(
            201,
            b"created",
            headers=[
                ("Set-Cookie", "session=abc; Path=/; HttpOnly"),
                ("Set-Cookie", "theme=dark; Path=/"),
                ("Connection", "X-Upstream-Hop"),
                ("X-Upstream-Hop", "internal"),
                ("Keep-Alive", "timeout=5"),
                ("Proxy-Authenticate", "Basic"),
                ("Link", "</a>; rel=next"),
                ("Link", "</b>; rel=last"),
            ],
        )
    )
    proxy_route(upstream.url, path="/cookies")
    port = int(gateway_process_factory().rsplit(":", 1)[1])

    # when: a raw client, so nothing folds the headers for us
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    connection.request("GET", "/gw/cookies")
    response = connection.getresponse()
    body = response.read()
    connection.close()

    # then
    assert response.status == 201
    assert body == b"created"
    assert response.headers.get_all("Set-Cookie") == ["session=abc; Path=/; HttpOnly", "theme=dark; Path=/"]
    assert response.headers.get_all("Link") == ["</a>; rel=next", "</b>; rel=last"]
    assert response.headers.get("X-Upstream-Hop") is None
    assert response.headers.get("Keep-Alive") is None
    assert response.headers.get("Proxy-Authenticate") is None
    assert response.headers.get("X-Correlation-ID")


# --- Through the shared server process ----------------------------------------------------------


def test_x_forwarded_for_is_started_when_the_client_sent_none(gw, http_server_factory):
    upstream = http_server_factory()
    proxy_route(upstream.url, path="/xff")

    response = gw.get("/gw/xff")

    assert response.status_code == 200
    assert upstream.requests[0].header("X-Forwarded-For") == "127.0.0.1"  # the peer's address


def test_upstream_answer_is_passed_through(gw, http_server_factory):
    upstream = http_server_factory(
        lambda request: Reply(404, b'{"error":"no user"}', headers=[("Content-Type", "application/json")])
    )
    proxy_route(upstream.url, path="/users/{user_id}")

    response = gw.get("/gw/users/42")

    assert response.status_code == 404
    assert response["Content-Type"] == "application/json"
    assert response.content == b'{"error":"no user"}'


@pytest.mark.parametrize(
    "body",
    [b"small" * 10, b"L" * (300 * 1024), (b"chunked-", b"and-", b"closed")],
    ids=["buffered", "streamed-with-length", "streamed-chunked"],
)
def test_upstream_closing_after_its_answer_is_read_to_the_end(gw, http_server_factory, body):
    # `Connection: close`: http.client closes the connection right after the head; the body must
    # still be read from the socket (the proxy's deadline-aware reader keeps it open until then).
    def answer(request):
        # a tuple of chunks: sent chunked, without Content-Length
        return Reply(200, body if isinstance(body, bytes) else iter(body), headers=[("Connection", "close")])

    upstream = http_server_factory(answer)
    proxy_route(upstream.url, path="/closing")

    expected = b"".join(body) if isinstance(body, tuple) else body

    first = gw.get("/gw/closing")
    second = gw.get("/gw/closing")  # a new connection: the closed one is not reused

    for response in (first, second):
        assert response.status_code == 200
        assert response.content == expected
    assert len(upstream.requests) == 2


def test_response_without_content_type_gets_none_added(gw, http_server_factory):
    upstream = http_server_factory(lambda request: Reply(200, b"raw"))
    proxy_route(upstream.url, path="/raw")

    response = gw.get("/gw/raw")

    assert response.status_code == 200
    assert "Content-Type" not in response.headers


def test_methods_and_bodies_are_forwarded(gw, http_server_factory):
    upstream = http_server_factory(lambda request: Reply(200, request.method.encode() + b":" + request.body))
    proxy_route(upstream.url, path="/items/**")

    put = gw.put("/gw/items/1", data=b"new", content_type="text/plain")
    delete = gw.delete("/gw/items/1")
    head = gw.head("/gw/items/1")

    assert put.content == b"PUT:new"
    assert delete.content == b"DELETE:"
    assert head.status_code == 200 and head.content == b""
    assert [r.method for r in upstream.requests] == ["PUT", "DELETE", "HEAD"]


def test_rewrite_fills_the_template_with_captured_segments(gw, http_server_factory):
    upstream = http_server_factory()
    proxy_route(upstream.url, path="/users/{user_id}/**", rewrite="/v2/accounts/{user_id}/{**}")

    gw.get("/gw/users/7/orders/9?x=1")

    assert upstream.requests[0].path == "/v2/accounts/7/orders/9?x=1"


def test_target_base_path_prefixes_the_upstream_path(gw, http_server_factory):
    upstream = http_server_factory()
    proxy_route(f"{upstream.url}/internal", path="/p/**")

    gw.get("/gw/p/a")

    assert upstream.requests[0].path == "/internal/p/a"


def test_round_robin_across_targets(gw, http_server_factory):
    first = http_server_factory(lambda request: Reply(200, b"first"))
    second = http_server_factory(lambda request: Reply(200, b"second"))
    proxy_route(first.url, second.url, path="/rr")

    bodies = [gw.get("/gw/rr").content for _ in range(6)]

    assert len(first.requests) == 3
    assert len(second.requests) == 3
    assert bodies[0] != bodies[1]  # alternating, not three then three


def test_body_over_the_limit_is_413_and_never_sent(gw_server, http_server_factory):
    gw = gw_server({"GATEWAY_MAX_BODY_BYTES": "1024"})
    upstream = http_server_factory()
    proxy_route(upstream.url, path="/upload")

    too_big = gw.post("/gw/upload", data=b"x" * 1025, content_type="application/octet-stream")
    just_fits = gw.post("/gw/upload", data=b"x" * 1024, content_type="application/octet-stream")

    assert too_big.status_code == 413
    assert too_big["Content-Type"] == "application/problem+json"
    assert just_fits.status_code == 200
    assert len(upstream.requests) == 1


def test_closed_port_is_502_problem(gw):
    proxy_route(f"http://127.0.0.1:{free_port()}", path="/closed")

    response = gw.get("/gw/closed", HTTP_X_CORRELATION_ID="c-502")

    assert response.status_code == 502
    body = json.loads(response.content)
    assert body["status"] == 502
    assert body["type"].endswith("/bad-gateway")
    assert body["correlation_id"] == "c-502"


def test_upstream_sending_garbage_is_502(gw, tcp_garbage_server):
    proxy_route(tcp_garbage_server, path="/garbage", retry_count=0)

    response = gw.get("/gw/garbage")

    assert response.status_code == 502


def test_routing_errors_are_problem_json(gw, http_server_factory):
    upstream = http_server_factory()
    proxy_route(upstream.url, path="/only-get", methods=("GET",))

    missing = gw.get("/gw/nothing-here")
    wrong_method = gw.delete("/gw/only-get")

    assert missing.status_code == 404
    assert missing["Content-Type"] == "application/problem+json"
    assert wrong_method.status_code == 405
    assert "GET" in wrong_method["Allow"]
    assert upstream.requests == []


@pytest.fixture
def tcp_garbage_server():
    """A TCP server answering every connection with bytes that are not HTTP."""
    import socket
    import threading

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    stop = threading.Event()

    def serve():
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            with conn:
                conn.recv(65536)
                conn.sendall(b"SSH-2.0-OpenSSH_9.0\r\nnot http at all\r\n\r\n")

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    stop.set()
    listener.close()


def test_body_of_a_request_refused_by_auth_is_never_read(gw, http_server_factory):
    # A 5 MiB body announced and never sent: the 401 comes back without the gateway waiting for it.
    upstream = http_server_factory()
    proxy_route(upstream.url, path="/private", auth_required=True)
    gw.get("/gw/nothing")  # the route is seen by the server before the raw request below

    connection = http.client.HTTPConnection("127.0.0.1", gw.port, timeout=10)
    connection.putrequest("POST", "/gw/private")
    connection.putheader("Content-Type", "application/octet-stream")
    connection.putheader("Content-Length", str(5 * 1024 * 1024))
    connection.endheaders()  # and not one byte of the body
    response = connection.getresponse()
    body = response.read()
    connection.close()

    assert response.status == 401
    assert json.loads(body)["status"] == 401
    assert upstream.requests == []
