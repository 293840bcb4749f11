"""Real servers for tests: HTTP upstreams on 127.0.0.1 and gateway server processes.

`http_server_factory(handler)` starts a threaded HTTP/1.1 server; `handler(request)` receives a
`RecordedRequest` and returns a `Reply`. Every request is also appended to `server.requests`.
With `tls=` (an `ssl.SSLContext` holding the server's certificate) it speaks HTTPS on
`https://localhost:<port>`.

`gateway_process_factory()` starts the project under its production server in a subprocess,
pointed at the current test database and Redis (use with `django_db(transaction=True)` so the
rows it must see are committed).
"""

from __future__ import annotations

import contextlib
import os
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import requests

ROOT = Path(__file__).resolve().parents[2]


@dataclass
class RecordedRequest:
    method: str
    path: str  # raw request target, query string included, byte for byte
    headers: list[tuple[str, str]]
    body: bytes

    def header(self, name: str) -> str | None:
        for key, value in self.headers:
            if key.lower() == name.lower():
                return value
        return None

    def header_all(self, name: str) -> list[str]:
        return [value for key, value in self.headers if key.lower() == name.lower()]


@dataclass
class Reply:
    status: int = 200
    body: bytes | Iterable[bytes] = b""
    headers: list[tuple[str, str]] = field(default_factory=list)
    delay: float = 0.0  # seconds to wait before answering
    close: bool = False  # drop the connection without answering


Handler = Callable[[RecordedRequest], Reply]


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True


class HttpServer:
    def __init__(self, handler: Handler, tls: ssl.SSLContext | None = None) -> None:
        self.handler = handler
        self.requests: list[RecordedRequest] = []
        self._lock = threading.Lock()
        outer = self

        class _RequestHandler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            # Head and body are two writes: with Nagle on, the body waits for the client's
            # delayed ACK (~40 ms) on a kept-alive connection, which no real upstream does.
            disable_nagle_algorithm = True

            def log_message(self, *args: object) -> None:
                return

            def _handle(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                recorded = RecordedRequest(self.command, self.path, list(self.headers.items()), body)
                with outer._lock:
                    outer.requests.append(recorded)
                reply = outer.handler(recorded)
                if reply.delay:
                    time.sleep(reply.delay)
                if reply.close:
                    self.close_connection = True
                    with contextlib.suppress(OSError):
                        self.connection.shutdown(socket.SHUT_RDWR)
                    return
                self.send_response(reply.status)
                names = {name.lower() for name, _ in reply.headers}
                for name, value in reply.headers:
                    self.send_header(name, value)
                if isinstance(reply.body, bytes | bytearray):
                    if "content-length" not in names:
                        self.send_header("Content-Length", str(len(reply.body)))
                    self.end_headers()
                    if self.command != "HEAD":
                        self.wfile.write(reply.body)
                else:
                    self.send_header("Transfer-Encoding", "chunked")
                    self.end_headers()
                    for chunk in reply.body:
                        if chunk:
                            self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                    self.wfile.write(b"0\r\n\r\n")

            do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = do_OPTIONS = _handle

        self._server = _Server(("127.0.0.1", 0), _RequestHandler)
        self.port = self._server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        if tls is not None:  # HTTPS: the handshake happens in the request's thread, on first read
            self._server.socket = tls.wrap_socket(
                self._server.socket, server_side=True, do_handshake_on_connect=False
            )
            self.url = f"https://localhost:{self.port}"
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.05,), daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def http_server_factory():
    servers: list[HttpServer] = []

    def start(handler: Handler | None = None, *, tls: ssl.SSLContext | None = None) -> HttpServer:
        server = HttpServer(handler or (lambda request: Reply(200, b"ok")), tls)
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.close()


def server_command(port: int) -> list[str]:
    """The production server command line (kept in one place: scripts/serve runs the same).

    `python -m config.server`: uvicorn (uvloop, httptools) with config/server/protocol.py,
    serving config.asgi:application; WEB_WORKERS / WEB_THREADS / WEB_* in the environment size
    and tune it (docs/gateway-proxy.md, "Server").
    """
    return [
        sys.executable,
        "-m",
        "config.server",
        "--bind",
        f"127.0.0.1:{port}",
        "--log-level",
        "warning",
    ]


def wait_healthy(process: subprocess.Popen, url: str, seconds: float = 60) -> str:
    """`url` once its /healthz answers 200; fails early if the server process exits."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server process {process.args!r} exited with {process.returncode}")
        try:
            if requests.get(f"{url}/healthz", timeout=0.5).status_code == 200:
                return url
        except requests.RequestException:
            time.sleep(0.1)
    raise RuntimeError(f"server process {process.args!r} did not become healthy in {seconds:.0f} s")


@pytest.fixture
def gateway_process_factory():
    from django.db import connection

    processes: list[subprocess.Popen] = []

    def start(extra_env: dict[str, str] | None = None) -> str:
        port = free_port()
        db = connection.settings_dict
        env = {
            **os.environ,
            "DJANGO_SETTINGS_MODULE": "config.settings.test",
            "DATABASE_URL": f"postgres://{db['USER']}@{db['HOST']}:{db['PORT']}/{db['NAME']}",
            "REDIS_URL": os.environ["REDIS_URL"],
            "PYTHONPATH": str(ROOT),
            **(extra_env or {}),
        }
        process = subprocess.Popen(server_command(port), cwd=ROOT, env=env)
        processes.append(process)
        return wait_healthy(process, f"http://127.0.0.1:{port}")

    yield start
    for process in processes:
        process.terminate()
    for process in processes:
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
