"""Helpers shared by the proxy tests: a route to some upstreams, raw responses, process memory."""

from __future__ import annotations

import os
from pathlib import Path

from tests.gateway.factories import RouteFactory, ServiceFactory


def proxy_route(
    *targets: str,
    path: str = "/t/**",
    methods: tuple[str, ...] = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"),
    **fields,
):
    """A route under /gw{path} to `targets`, without auth (the auth path has its own tests)."""
    service = ServiceFactory(targets=list(targets))
    fields.setdefault("auth_required", False)
    return RouteFactory(path=path, methods=list(methods), service=service, **fields)


def server_pids(port: int) -> list[int]:
    """Processes of the server bound to `port` (master and workers share the command line)."""
    needle = f"127.0.0.1:{port}".encode()
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if needle in cmdline and int(entry.name) != os.getpid():
            pids.append(int(entry.name))
    return pids + [child for pid in pids for child in _descendants(pid)]


def _descendants(pid: int) -> list[int]:
    """Worker processes of a server whose workers do not repeat its command line (spawned)."""
    children = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        if int(stat.rpartition(")")[2].split()[1]) == pid:
            children.append(int(entry.name))
    return children + [grandchild for child in children for grandchild in _descendants(child)]


def status_kb(pid: int, field: str) -> int:
    """A figure of /proc/<pid>/status in kB (VmRSS, VmHWM…)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)
