"""Which ASGI server: the candidates on one trivial app, same wrk load, one run (docs/gateway-proxy.md).

    .venv/bin/python benchmarks/asgi_servers.py [--duration 5] [--connections 64]

Each candidate serves `benchmarks.asgi_servers:echo` with 2 workers; first a raw-target check
(`GET /a%2Fb/%7e?tilde=%7e&x=%2F` must give the app raw_path and query_string exactly as sent),
then wrk, --rounds times, the candidates taking turns so that each round sees the same machine;
then the median req/s of each and its ratio to uvicorn httptools+uvloop (the production server's
base). Needs wrk; hypercorn and granian are pip-installed into var/bench/site for the benchmark
only (not project dependencies).
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


def ensure_candidates(site: Path) -> None:
    for module, package in (("hypercorn", "hypercorn"), ("granian", "granian")):
        if not (site / module).exists():
            subprocess.run(
                [sys.executable, "-m", "pip", "install", "-q", "--target", str(site), package], check=True
            )


def main() -> None:
    import os
    import statistics

    from benchmarks.gateway import SITE, Contender, free_port, run_wrk

    parser = argparse.ArgumentParser()
    parser.add_argument("--duration", type=int, default=5)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    SITE.mkdir(parents=True, exist_ok=True)
    ensure_candidates(SITE)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(SITE)])}
    target = b"/a%2Fb/%7e?tilde=%7e&x=%2F"
    processes: dict[str, tuple[subprocess.Popen, int]] = {}
    rates: dict[str, list[float]] = {}
    try:
        for name in commands(0):
            port = free_port()
            process = subprocess.Popen(commands(port)[name], cwd=ROOT, env=env)
            processes[name] = (process, port)
            deadline = time.monotonic() + 30
            while True:
                try:
                    seen = raw_get(port, target)
                    break
                except OSError:
                    if time.monotonic() > deadline or process.poll() is not None:
                        raise SystemExit(f"{name} did not start") from None
                    time.sleep(0.2)
            kept = "kept" if seen == target else "CHANGED: " + seen.decode(errors="replace")
            print(f"{name:<26} raw target {kept}", flush=True)
        for round_number in range(args.rounds):
            for name, (_, port) in processes.items():
                result = run_wrk(
                    Contender(name, f"http://127.0.0.1:{port}/x?y=1"), args.duration, args.connections
                )
                rates.setdefault(name, []).append(result.rps)
                print(
                    f"round {round_number} {name:<26} {result.rps:>8.0f} req/s  p50 {result.p50_ms:6.2f} ms"
                    f"  p99 {result.p99_ms:6.2f} ms",
                    flush=True,
                )
    finally:
        for process, _ in processes.values():
            process.terminate()
        for process, _ in processes.values():
            process.wait(timeout=20)
    base = statistics.median(rates["uvicorn httptools+uvloop"])
    print(f"\nmedian of {args.rounds} rounds, wrk -c{args.connections}, ratio to uvicorn httptools+uvloop:")
    for name, values in rates.items():
        median = statistics.median(values)
        print(f"  {name:<26} {median:>8.0f} req/s  {median / base:5.2f}x")


if __name__ == "__main__":
    main()
