"""The asyncio /gw pipeline under load and faults, through the real server process (issue 9 items
1, 2, 5): requests in flight, client disconnects, SIGTERM, database locks, the request target."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import aiohttp
import psycopg
import pytest
import requests
from aiohttp import web
from django.db import connection

from idempotency.models import IdempotencyRecord
from tests.gateway.proxy_support import proxy_route
from tests.server.raw import address, read_until_closed
from tests.support.servers import ROOT, Reply, free_port, server_command, wait_healthy

pytestmark = pytest.mark.django_db(transaction=True)


class AsyncUpstream:
    """An aiohttp upstream on its own loop and thread: holds any number of requests at once.

    Each request waits `delay` seconds, then answers 200 with its target; `closed` records the
    requests whose client (the gateway) closed the connection before the answer.
    """

    def __init__(self, delay: float = 0.0) -> None:
        self.delay = delay
        self.targets: list[str] = []
        self.started: list[float] = []
        self.closed: list[float] = []
        self.loop = asyncio.new_event_loop()
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        ready = threading.Event()
        self.thread = threading.Thread(target=self._run, args=(ready,), daemon=True)
        self.thread.start()
        assert ready.wait(10)

    async def _handle(self, request: web.Request) -> web.Response:
        self.targets.append(request.raw_path)
        self.started.append(time.monotonic())
        try:
            await asyncio.sleep(self.delay)
        except asyncio.CancelledError:  # aiohttp cancels the handler when the peer closes
            self.closed.append(time.monotonic())
            raise
        return web.Response(body=request.raw_path.encode(), content_type="text/plain")

    def _run(self, ready: threading.Event) -> None:
        asyncio.set_event_loop(self.loop)
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        # handler_cancellation: a handler is cancelled when its client goes away
        self.runner = web.AppRunner(app, handler_cancellation=True, access_log=None)
        self.loop.run_until_complete(self.runner.setup())
        site = web.TCPSite(self.runner, "127.0.0.1", self.port, backlog=1024)
        self.loop.run_until_complete(site.start())
        ready.set()
        self.loop.run_forever()

    def close(self) -> None:
        asyncio.run_coroutine_threadsafe(self.runner.cleanup(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


@pytest.fixture
def async_upstream():
    servers: list[AsyncUpstream] = []

    def start(delay: float = 0.0) -> AsyncUpstream:
        server = AsyncUpstream(delay)
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.close()


def _server_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    db = connection.settings_dict
    return {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "config.settings.test",
        "DATABASE_URL": f"postgres://{db['USER']}@{db['HOST']}:{db['PORT']}/{db['NAME']}",
        "PYTHONPATH": str(ROOT),
        **(extra or {}),
    }


def test_300_requests_in_flight_to_a_1_s_upstream_are_served_at_once(async_upstream, gateway_process_factory):
    upstream = async_upstream(delay=1.0)
    proxy_route(upstream.url, path="/slow/**", timeout_ms=10_000)
    gateway = gateway_process_factory()
    assert requests.get(f"{gateway}/gw/slow/warm", timeout=10).status_code == 200

    async def load() -> tuple[list[int], float]:
        connector = aiohttp.TCPConnector(limit=0)
        async with aiohttp.ClientSession(connector=connector) as session:

            async def one(n: int) -> int:
                async with session.get(f"{gateway}/gw/slow/{n}", timeout=aiohttp.ClientTimeout(30)) as r:
                    assert await r.read() == f"/slow/{n}".encode()
                    return r.status

            started = time.monotonic()
            statuses = await asyncio.gather(*(one(n) for n in range(300)))
            return statuses, time.monotonic() - started

    statuses, elapsed = asyncio.run(load())

    assert statuses == [200] * 300
    # A thread per request (2 workers x 16 threads) needed ~10 s for this; an event loop ~1 s.
    assert elapsed < 4, f"300 requests to a 1 s upstream took {elapsed:.1f} s"


def test_the_request_target_reaches_the_upstream_byte_for_byte(async_upstream, gateway_process_factory):
    upstream = async_upstream()
    proxy_route(upstream.url, path="/files/**")
    gateway = gateway_process_factory()
    host, port = address(gateway)

    with socket.create_connection((host, port), timeout=5) as sock:
        sock.sendall(
            b"GET /gw/files/a%2Fb/%7e?tilde=%7e&a=%2F+b HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            b"Connection: close\r\n\r\n"
        )
        answer = read_until_closed(sock, timeout=5)

    assert answer.startswith(b"HTTP/1.1 200")
    assert upstream.targets == ["/files/a%2Fb/%7e?tilde=%7e&a=%2F+b"]


def test_a_client_that_disconnects_cancels_its_upstream_call_and_completes_no_key(
    async_upstream, gateway_process_factory
):
    upstream = async_upstream(delay=5.0)
    proxy_route(upstream.url, path="/pay/**", idempotency="required", timeout_ms=10_000)
    gateway = gateway_process_factory()
    host, port = address(gateway)

    sock = socket.create_connection((host, port), timeout=5)
    sock.sendall(
        b"POST /gw/pay/1 HTTP/1.1\r\nHost: 127.0.0.1\r\nIdempotency-Key: k-gone\r\n"
        b"Content-Type: application/json\r\nContent-Length: 2\r\n\r\n{}"
    )
    deadline = time.monotonic() + 5
    while not upstream.started and time.monotonic() < deadline:
        time.sleep(0.02)
    assert upstream.started, "the request never reached the upstream"
    gone = time.monotonic()
    sock.close()

    deadline = time.monotonic() + 3
    while not upstream.closed and time.monotonic() < deadline:
        time.sleep(0.02)
    assert upstream.closed, "the upstream connection stayed open after the client left"
    assert upstream.closed[0] - gone < 1.0
    deadline = time.monotonic() + 3
    record = None
    while time.monotonic() < deadline:
        record = IdempotencyRecord.objects.get(key="k-gone")
        if record.status != IdempotencyRecord.Status.PROCESSING:
            break
        time.sleep(0.05)
    assert record is not None and record.status == IdempotencyRecord.Status.FAILED
    assert record.response_status is None


def test_a_row_lock_on_one_routes_key_does_not_delay_a_public_get_on_another(
    http_server_factory, gateway_process_factory
):
    statuses = iter([503])  # the first POST is released (failed), so a retry must take the row over
    upstream = http_server_factory(lambda request: Reply(next(statuses, 200), b"done"))
    proxy_route(upstream.url, path="/pay/**", idempotency="required", retry_count=0)
    proxy_route(upstream.url, path="/public/**")
    gateway = gateway_process_factory({"WEB_WORKERS": "1"})
    post = {"Idempotency-Key": "k-locked", "Content-Type": "application/json"}
    assert requests.post(f"{gateway}/gw/pay/1", data=b"{}", headers=post, timeout=10).status_code == 503
    assert requests.get(f"{gateway}/gw/public/x", timeout=10).status_code == 200  # route warm

    db = connection.settings_dict
    locker = psycopg.connect(host=db["HOST"], port=db["PORT"], user=db["USER"], dbname=db["NAME"])
    with ThreadPoolExecutor(4) as pool:
        try:
            locker.execute("SELECT id FROM idempotency_record WHERE key = 'k-locked' FOR UPDATE")
            waiting = [
                pool.submit(requests.post, f"{gateway}/gw/pay/1", data=b"{}", headers=post, timeout=20)
                for _ in range(3)
            ]
            time.sleep(0.3)  # the POSTs are blocked on the row now
            assert not any(future.done() for future in waiting)
            started = time.monotonic()
            public = requests.get(f"{gateway}/gw/public/y", timeout=5)
            elapsed = time.monotonic() - started
        finally:
            locker.rollback()
            locker.close()
        answers = [future.result() for future in waiting]

    assert public.status_code == 200
    assert elapsed < 0.5, f"a public GET waited {elapsed:.2f} s behind a row lock"
    assert sorted(a.status_code for a in answers)[0] == 200
    assert {a.status_code for a in answers} <= {200, 409}


def test_sigterm_lets_requests_in_flight_finish_refuses_new_ones_and_exits_0(async_upstream):
    upstream = async_upstream(delay=0.5)
    proxy_route(upstream.url, path="/t/**", timeout_ms=5000)
    port = free_port()
    process = subprocess.Popen(server_command(port), cwd=ROOT, env=_server_env())
    try:
        gateway = wait_healthy(process, f"http://127.0.0.1:{port}")
        assert requests.get(f"{gateway}/gw/t/warm", timeout=10).status_code == 200
        sockets = []
        for n in range(20):
            sock = socket.create_connection(("127.0.0.1", port), timeout=5)
            sock.sendall(b"GET /gw/t/%d HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n" % n)
            sockets.append(sock)
        deadline = time.monotonic() + 3
        while len(upstream.started) < 21 and time.monotonic() < deadline:
            time.sleep(0.01)
        process.send_signal(signal.SIGTERM)

        answers = [read_until_closed(sock, timeout=5) for sock in sockets]
        for sock in sockets:
            sock.close()
        refused = False
        deadline = time.monotonic() + 3
        while not refused and time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                time.sleep(0.05)
            except ConnectionRefusedError:
                refused = True
        code = process.wait(timeout=15)
    finally:
        if process.poll() is None:
            process.kill()

    for n, answer in enumerate(answers):
        assert answer.startswith(b"HTTP/1.1 200") and answer.endswith(b"/t/%d" % n), answer[:200]
    assert refused, "new connections still accepted after SIGTERM"
    assert code == 0
