"""The production server shared by the tests of one xdist worker: `gw` and `gw_server`.

Starting `python -m config.server` costs 1-3 s, so one process per distinct extra environment is
started on first use and kept for the whole session (one worker process, so every request meets
the same per-process state a single-process test client would). Between tests:
- the database is emptied by pytest-django (tests must use `django_db(transaction=True)`: the
  server reads committed rows only) and Redis by tests/conftest.py;
- the server's local cache layers are dropped through the invalidation bus, the way
  `manage.py gateway_cache flush` reaches every instance;
- route changes reach it through the bus too; `GatewayClient` waits until the server sees them
  (a probe route created after the test's routes answers) before its first request after one.

    def test_x(gw, http_server_factory):
        proxy_route(upstream.url, path="/x")
        response = gw.get("/gw/x", HTTP_X_CUSTOM="1")   # Django-test-client-like calls

    def test_y(gw_server, token_service):
        gw = gw_server(token_service.env | {"GATEWAY_MAX_BODY_BYTES": "1024"})

    def test_z(gw, gw_fresh):
        gw.post(...)                 # the session's server fills its local layers
        cold = gw_fresh()            # a new process of its own: only Redis and the database
        cold.post(...)               # are shared with it (stopped at the end of the test)
"""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import time
from typing import Any

import pytest
import urllib3

from tests.support.servers import ROOT, HttpServer, Reply, free_port, server_command, wait_healthy

_probe_numbers = itertools.count(1)
_routes_changes = itertools.count(1)
_last_routes_change = 0


def routes_changed() -> None:
    """Called by the route factories: the next request of a client waits for the server to see it."""
    global _last_routes_change
    _last_routes_change = next(_routes_changes)


class GatewayResponse:
    """What a client saw: status, headers (case-insensitive; `headers.getlist` for repeats), body."""

    def __init__(self, response: urllib3.BaseHTTPResponse) -> None:
        self.status_code = response.status
        self.headers = response.headers  # urllib3.HTTPHeaderDict
        self.content = response.data

    def __getitem__(self, name: str) -> str:  # Django's `response["Content-Type"]`
        return self.headers[name]

    def __contains__(self, name: str) -> bool:
        return name in self.headers

    def header_all(self, name: str) -> list[str]:
        return self.headers.getlist(name)

    @property
    def text(self) -> str:
        return self.content.decode()

    def json(self) -> Any:
        return json.loads(self.content)


def _header_name(key: str) -> str:
    """`HTTP_X_USER_ID` → `X-User-Id` (Django test client keyword arguments)."""
    return "-".join(part.capitalize() for part in key.removeprefix("HTTP_").split("_"))


class GatewayClient:
    """HTTP/1.1 to one server process, with the Django test client's calling conventions."""

    def __init__(self, server: GatewayServer) -> None:
        self.server = server
        self.url = server.url
        self.port = server.port
        self._synced = -1

    def request(
        self,
        method: str,
        path: str,
        data: bytes | str | dict | None = None,
        content_type: str | None = None,
        headers: dict[str, str] | None = None,
        timeout: float = 30,
        **meta: str,
    ) -> GatewayResponse:
        if self._synced != _last_routes_change:
            self.sync()
        all_headers: dict[str, str] = {}
        for key, value in meta.items():
            if not key.startswith("HTTP_"):
                raise TypeError(f"{key}: the server sees a real connection; only HTTP_* headers can be set")
            all_headers[_header_name(key)] = value
        all_headers.update(headers or {})
        body: bytes | None
        if isinstance(data, dict):
            body = json.dumps(data).encode()
            content_type = content_type or "application/json"
        elif isinstance(data, str):
            body = data.encode()
        else:
            body = data
        if content_type:
            all_headers["Content-Type"] = content_type
        response = self.server.pool.request(
            method,
            path,
            body=body,
            headers=all_headers,
            redirect=False,
            retries=False,
            timeout=timeout,
            preload_content=True,
        )
        return GatewayResponse(response)

    def stream(self, method: str, path: str, **headers: str) -> urllib3.BaseHTTPResponse:
        """An answer whose body is read by the caller (`.stream(n)`, `.read(n)`, `.release_conn()`)."""
        if self._synced != _last_routes_change:
            self.sync()
        pool = urllib3.HTTPConnectionPool("127.0.0.1", self.port, maxsize=1)
        return pool.request(method, path, headers=headers, retries=False, timeout=30, preload_content=False)

    def generic(self, method: str, path: str, data: Any = None, **kwargs: Any) -> GatewayResponse:
        return self.request(method, path, data, **kwargs)

    def get(self, path: str, **kwargs: Any) -> GatewayResponse:
        return self.request("GET", path, **kwargs)

    def head(self, path: str, **kwargs: Any) -> GatewayResponse:
        return self.request("HEAD", path, **kwargs)

    def options(self, path: str, **kwargs: Any) -> GatewayResponse:
        return self.request("OPTIONS", path, **kwargs)

    def post(self, path: str, data: Any = None, **kwargs: Any) -> GatewayResponse:
        return self.request("POST", path, data, **kwargs)

    def put(self, path: str, data: Any = None, **kwargs: Any) -> GatewayResponse:
        return self.request("PUT", path, data, **kwargs)

    def patch(self, path: str, data: Any = None, **kwargs: Any) -> GatewayResponse:
        return self.request("PATCH", path, data, **kwargs)

    def delete(self, path: str, data: Any = None, **kwargs: Any) -> GatewayResponse:
        return self.request("DELETE", path, data, **kwargs)

    def metrics(self) -> str:
        """The server's /metrics as scraped by Prometheus."""
        return self.server.pool.request("GET", "/metrics", retries=False, timeout=10).data.decode()

    def sync(self, seconds: float = 10) -> None:
        """Wait until the server's route table holds every route committed so far."""
        from tests.gateway.factories import RouteFactory, ServiceFactory

        path = f"/gatehouse-sync-probe-{os.getpid()}-{next(_probe_numbers)}"
        RouteFactory(
            path=path,
            methods=["GET"],
            auth_required=False,
            retry_count=0,
            service=ServiceFactory(targets=[self.server.probe.url]),
        )
        changes = _last_routes_change  # the probe's own creation included
        deadline = time.monotonic() + seconds
        while True:
            answer = self.server.pool.request("GET", f"/gw{path}", retries=False, timeout=10)
            if answer.status == 200 and answer.data == b"probe":
                break
            if time.monotonic() > deadline:
                raise AssertionError(f"the server did not see the new routes within {seconds} s")
            time.sleep(0.02)
        self._synced = changes


class GatewayServer:
    def __init__(self, env: dict[str, str], probe: HttpServer) -> None:
        self.probe = probe
        self.port = free_port()
        self.process = subprocess.Popen(server_command(self.port), cwd=ROOT, env=env)
        self.url = wait_healthy(self.process, f"http://127.0.0.1:{self.port}")
        self.pool = urllib3.HTTPConnectionPool("127.0.0.1", self.port, maxsize=4, block=False)

    def stop(self) -> None:
        self.pool.close()
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()


def server_env(extra: dict[str, str]) -> dict[str, str]:
    from django.db import connection

    db = connection.settings_dict
    return {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "config.settings.test",
        "DATABASE_URL": f"postgres://{db['USER']}@{db['HOST']}:{db['PORT']}/{db['NAME']}",
        "REDIS_URL": os.environ["REDIS_URL"],
        "PYTHONPATH": str(ROOT),
        "WEB_WORKERS": "1",
        **extra,
    }


@pytest.fixture(scope="session")
def _gw_servers(django_db_setup):  # stopped before the test database is dropped
    servers: dict[tuple, GatewayServer] = {}
    probe = HttpServer(lambda request: Reply(200, b"probe"))
    yield servers, probe
    for server in servers.values():
        server.stop()
    probe.close()


def _server_caches_flush() -> None:
    """Every server process drops its local rbac / revoked / jwks / response layers."""
    from django.conf import settings

    from gateway.services.cache_stats import CACHE_KINDS
    from gateway.services.invalidation import invalidation_publish

    if settings.REDIS_URL:
        for kind in CACHE_KINDS:
            if kind != "routes":  # the probe route of the first request invalidates those
                invalidation_publish(kind=kind, payload={"flush": True})


@pytest.fixture
def gw_server(_gw_servers, transactional_db):
    """`gw_server(extra_env)`: a client of the session's server started with that environment."""
    servers, probe = _gw_servers
    _server_caches_flush()

    def client(extra_env: dict[str, str] | None = None) -> GatewayClient:
        extra = dict(extra_env or {})
        key = tuple(sorted(extra.items()))
        server = servers.get(key)
        if server is not None and server.process.poll() is not None:
            server = None
        if server is None:
            server = servers[key] = GatewayServer(server_env(extra), probe)
        return GatewayClient(server)

    return client


@pytest.fixture
def gw_fresh(_gw_servers, transactional_db):
    """`gw_fresh(extra_env)`: a client of a new server process started for this test alone (its
    local cache layers empty, as in an instance that just started), stopped when the test ends."""
    _, probe = _gw_servers
    started: list[GatewayServer] = []

    def client(extra_env: dict[str, str] | None = None) -> GatewayClient:
        server = GatewayServer(server_env(dict(extra_env or {})), probe)
        started.append(server)
        return GatewayClient(server)

    yield client
    for server in started:
        server.stop()


@pytest.fixture
def gw(gw_server):
    """A client of the session's server with the default test environment."""
    return gw_server()
