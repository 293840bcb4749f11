"""Which ASGI server: the candidates on one trivial app, same wrk load, one run (docs/gateway-proxy.md).

    .venv/bin/python benchmarks/asgi_servers.py [--duration 5] [--connections 64]

Each candidate serves `benchmarks.asgi_servers:echo` with 2 workers; first a raw-target check
(`GET /a%2Fb/%7e?tilde=%7e&x=%2F` must give the app raw_path and query_string exactly as sent),
then wrk. Needs wrk; hypercorn is installed for the benchmark only when missing.
"""

from __future__ import annotations

import argparse
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


async def echo(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        while (await receive())["type"] != "lifespan.shutdown":
            await send({"type": "lifespan.startup.complete"})
        await send({"type": "lifespan.shutdown.complete"})
        return
    body = scope.get("raw_path", b"<none>") + b"?" + scope["query_string"]
    await send(
        {"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"%d" % len(body))]}
    )
    await send({"type": "http.response.body", "body": body})


def commands(port: int) -> dict[str, list[str]]:
    py, app = sys.executable, "benchmarks.asgi_servers:echo"
    uv = [
        py,
        "-m",
        "uvicorn",
        app,
        "--port",
        str(port),
        "--workers",
        "2",
        "--no-access-log",
        "--log-level",
        "warning",
    ]
    return {
        "uvicorn httptools+uvloop": [*uv, "--http", "httptools", "--loop", "uvloop"],
        "uvicorn h11+asyncio": [*uv, "--http", "h11", "--loop", "asyncio"],
        "hypercorn (uvloop)": [py, "-m", "hypercorn", app, "--bind", f"127.0.0.1:{port}", "--workers", "2",
                               "--worker-class", "uvloop"],
        "granian asgi": [py, "-m", "granian", "--interface", "asgi", "--port", str(port), "--workers", "2",
                         "--no-access-log", app],
    }  # fmt: skip


def raw_get(port: int, target: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(b"GET " + target + b" HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        out = b""
        while chunk := sock.recv(65536):
            out += chunk
    return out.partition(b"\r\n\r\n")[2]


def main() -> None:
    from benchmarks.gateway import Contender, free_port, run_wrk

    parser = argparse.ArgumentParser()
    parser.add_argument("--duration", type=int, default=5)
    parser.add_argument("--connections", type=int, default=64)
    args = parser.parse_args()
    target = b"/a%2Fb/%7e?tilde=%7e&x=%2F"
    for name, _ in commands(0).items():
        port = free_port()
        process = subprocess.Popen(commands(port)[name], cwd=ROOT)
        try:
            deadline = time.monotonic() + 30
            while True:
                try:
                    seen = raw_get(port, target)
                    break
                except OSError:
                    if time.monotonic() > deadline or process.poll() is not None:
                        raise SystemExit(f"{name} did not start") from None
                    time.sleep(0.2)
            result = run_wrk(
                Contender(name, f"http://127.0.0.1:{port}/x?y=1"), args.duration, args.connections
            )
            print(
                f"{name:<26} {result.rps:>8.0f} req/s  p50 {result.p50_ms:6.2f} ms"
                f"  p99 {result.p99_ms:6.2f} ms"
                f"  raw target {'kept' if seen == target else 'CHANGED: ' + seen.decode(errors='replace')}",
                flush=True,
            )
        finally:
            process.terminate()
            process.wait(timeout=20)


if __name__ == "__main__":
    main()
