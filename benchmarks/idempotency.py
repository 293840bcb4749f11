"""What Idempotency-Key costs, and what a replay saves, measured in ONE run.

    .venv/bin/python benchmarks/idempotency.py [--requests 300] [--rounds 4] [--upstream-ms 0,5]

Runs the project under its production server (`scripts/serve`: gunicorn, 2 workers) against
PostgreSQL and Redis. For each upstream think time of --upstream-ms, a local upstream (a small
asyncio server in its own process answering 201 + JSON + Location after that delay) behind two
gateway routes:

    POST /gw/bench/{ms}/plain   idempotency = off
    POST /gw/bench/{ms}/idem    idempotency = required

A 0 ms upstream is the worst case for the ratio (the proxy hop itself is ~1 ms); 5 ms stands for
a real service doing one database write.

Contenders, interleaved in rounds so drift hits all of them alike, one keep-alive client:
    plain   POST to the route without idempotency
    fresh   POST with a new Idempotency-Key each time (claim, proxy, store)
    replay  POST repeating a completed key (answered from the stored response)

Prints median/mean/p95 latency and the ratios: fresh/plain (target <= 1.3x) and fresh/replay
(target >= 2x). Environment: DATABASE_URL (default postgres://postgres@127.0.0.1:5432/
gh_idem_bench, created and migrated), REDIS_URL (default redis://127.0.0.1:6379/8).
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PY = str(ROOT / ".venv" / "bin" / "python") if (ROOT / ".venv").exists() else sys.executable

UPSTREAM = r"""
import asyncio, json, sys
DELAY = float(sys.argv[2]) / 1000
COUNT = 0
async def handle(reader, writer):
    global COUNT
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n"):
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":", 1)[1])
            if length:
                await reader.readexactly(length)
            if DELAY:
                await asyncio.sleep(DELAY)
            COUNT += 1
            body = json.dumps({"id": COUNT, "status": "created", "email": "ada@example.com",
                               "roles": ["member"], "links": {"self": f"/accounts/{COUNT}"}}).encode()
            writer.write(b"HTTP/1.1 201 Created\r\nContent-Type: application/json\r\n"
                         b"Location: /accounts/%d\r\nContent-Length: %d\r\n\r\n%s" % (COUNT, len(body), body))
    except (asyncio.IncompleteReadError, ConnectionError):
        writer.close()
async def main():
    server = await asyncio.start_server(handle, "127.0.0.1", int(sys.argv[1]), backlog=1024)
    await server.serve_forever()
asyncio.run(main())
"""

BODY = json.dumps({"email": "ada@example.com", "password": "correct horse battery staple"}).encode()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_http(url: str, seconds: float = 30) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=1) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"{url} did not answer 200 within {seconds} s")


def prepare(env: dict[str, str], upstreams: dict[str, str]) -> None:
    database = env["DATABASE_URL"].rsplit("/", 1)[1]
    subprocess.run(
        ["createdb", "-h", "127.0.0.1", "-U", "postgres", database],
        stderr=subprocess.DEVNULL,
        check=False,
    )
    subprocess.run([PY, "manage.py", "migrate", "--noinput", "-v", "0"], cwd=ROOT, env=env, check=True)
    routes: dict[str, list] = {"services": [], "routes": []}
    for label, url in upstreams.items():
        routes["services"].append({"name": f"bench-upstream-{label}", "targets": [url]})
        for name, idempotency in (("plain", "off"), ("idem", "required")):
            routes["routes"].append(
                {
                    "method": "POST",
                    "path": f"/bench/{label}/{name}",
                    "backend": f"bench-upstream-{label}",
                    "auth_required": False,
                    "retry": 0,
                    "idempotency": idempotency,
                }
            )
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as handle:
        json.dump(routes, handle)
    subprocess.run(
        [PY, "manage.py", "load_routes", handle.name, "--prune"],
        cwd=ROOT,
        env=env,
        check=True,
        stdout=subprocess.DEVNULL,
    )
    os.unlink(handle.name)


class Client:
    def __init__(self, port: int) -> None:
        self.connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)

    def post(self, path: str, key: str | None) -> tuple[float, int, dict[str, str], bytes]:
        headers = {"Content-Type": "application/json"}
        if key is not None:
            headers["Idempotency-Key"] = key
        started = time.perf_counter()
        self.connection.request("POST", path, body=BODY, headers=headers)
        response = self.connection.getresponse()
        body = response.read()
        elapsed = time.perf_counter() - started
        return elapsed, response.status, dict(response.getheaders()), body


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--requests", type=int, default=300, help="requests per contender per round")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--upstream-ms", default="0,5", help="upstream think times, comma-separated")
    args = parser.parse_args()

    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "config.settings.production",
        "SECRET_KEY": "benchmark-only-secret-key",
        "DEBUG": "false",
        "DATABASE_URL": os.environ.get("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/gh_idem_bench"),
        "REDIS_URL": os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/8"),
        "CELERY_BROKER_URL": "memory://",
        "LOG_LEVEL": "WARNING",
        "PROMETHEUS_MULTIPROC_DIR": tempfile.mkdtemp(prefix="idem-bench-prom-"),
    }
    delays = [label.strip() for label in args.upstream_ms.split(",") if label.strip()]
    gateway_port = free_port()
    processes: list[subprocess.Popen] = []
    try:
        upstreams = {}
        for delay in delays:
            port = free_port()
            processes.append(subprocess.Popen([PY, "-c", UPSTREAM, str(port), delay]))
            upstreams[delay] = f"http://127.0.0.1:{port}"
        prepare(env, upstreams)
        processes.append(
            subprocess.Popen(
                ["bash", "scripts/serve"],
                cwd=ROOT,
                env={**env, "BIND": f"127.0.0.1:{gateway_port}", "PYTHON": PY},
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        )
        wait_http(f"http://127.0.0.1:{gateway_port}/healthz")
        print(
            f"gateway POST to a local upstream; {args.rounds} rounds x {args.requests} requests per "
            "contender, interleaved; one keep-alive client; gunicorn 2 workers; PostgreSQL + Redis"
        )
        for delay in delays:
            run(gateway_port, args, delay)
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()


def run(port: int, args: argparse.Namespace, delay: str) -> None:
    plain, idem = f"/gw/bench/{delay}/plain", f"/gw/bench/{delay}/idem"
    client = Client(port)
    replay_key = f"bench-replay-{uuid.uuid4()}"
    _, status, _, original = client.post(idem, replay_key)
    assert status == 201, status
    # warm-up: connections, pools, route caches and both workers' local layers
    for _ in range(200):
        client.post(plain, None)
        client.post(idem, str(uuid.uuid4()))
        client.post(idem, replay_key)

    samples: dict[str, list[float]] = {"plain": [], "fresh": [], "replay": []}
    for _ in range(args.rounds):
        for _ in range(args.requests):
            elapsed, status, _, _ = client.post(plain, None)
            assert status == 201, status
            samples["plain"].append(elapsed)
        for _ in range(args.requests):
            elapsed, status, headers, _ = client.post(idem, str(uuid.uuid4()))
            assert status == 201 and "Idempotent-Replayed" not in headers, (status, headers)
            samples["fresh"].append(elapsed)
        for _ in range(args.requests):
            elapsed, status, headers, body = client.post(idem, replay_key)
            assert status == 201 and headers.get("Idempotent-Replayed") == "true", (status, headers)
            assert body == original
            samples["replay"].append(elapsed)

    print(f"\nupstream think time {delay} ms")
    print(f"{'contender':<10}{'median ms':>12}{'mean ms':>12}{'p95 ms':>12}")
    stats = {}
    for name, values in samples.items():
        ordered = sorted(values)
        stats[name] = statistics.median(ordered)
        p95 = ordered[int(len(ordered) * 0.95) - 1]
        mean = statistics.fmean(ordered)
        print(f"{name:<10}{stats[name] * 1000:>12.3f}{mean * 1000:>12.3f}{p95 * 1000:>12.3f}")
    overhead = stats["fresh"] / stats["plain"]
    added = (stats["fresh"] - stats["plain"]) * 1000
    speedup = stats["fresh"] / stats["replay"]
    print(f"overhead  fresh key vs no idempotency: {overhead:.2f}x, +{added:.2f} ms (target <= 1.3x)")
    print(f"replay    fresh execution vs replay:   {speedup:.2f}x faster (target >= 2x)")


if __name__ == "__main__":
    main()
