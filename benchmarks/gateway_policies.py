"""A route with policies against the same route without, in ONE run (target >= 0.9x).

    .venv/bin/python benchmarks/gateway_policies.py [--duration 3] [--rounds 5] [--connections 32,256]
        [--breakdown]

Same upstream (asyncio, 5-byte body), the production server (`python -m config.server`, the asyncio
/gw pipeline, 2 workers), routes differing only by their policies: `/plain/**` none, `/pol/**` a
rate limit that is never reached (key "ip", counted in Redis when REDIS_URL is set) plus CORS,
requests carrying an allowed `Origin`. wrk runs interleaved rounds (the order alternates); each
round's ratio, the median ratio, and the server's CPU per request (/proc) are printed. Earlier
runs' `ratelimit:*` counts in REDIS_URL's database are deleted first. Needs wrk.

Measured 2026-12-07 on the shared 2-core machine, load average 15-23 (other test suites running),
REDIS_URL set; req/s swung 3x between rounds of one contender, so the per-round figures are given:
- one EVALSHA per request (before leases and pipelining), -c32 -d5s, three runs: ratios per round
  0.63, 0.39, 1.29 / 0.43, 0.32, 0.55, 0.59 / 0.38 (one 12 s round); --breakdown put the cost in
  the rate limit (rate limit only 0.39-0.75x, CORS only 0.57-1.99x), p50 +3-6 ms (the Redis wait).
- with leases and pipelining, -d3s --rounds 5 (one full run; a second crashed on a round with no
  answers, fixed since): c=32 ratios 0.96, 0.83, 1.08, 2.15, 0.41 (median 0.96x) then 0.72, 0.50,
  3.89, 1.59, 0.86 (median 0.86x); c=256 medians 0.72x and 0.70x. Server CPU per request (median
  of 5 rounds): c=32 311 us without policies vs 310 us with; c=256 381 vs 473 us.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.gateway import (
    ASYNC_UPSTREAM,
    PY,
    ROOT,
    VAR,
    Contender,
    free_port,
    prepare_project,
    run_wrk,
    stop_processes,  # noqa: E402
    wait_http,
    warm,
)
from benchmarks.gateway_concurrency import descendants  # noqa: E402
from tests.support.servers import server_command  # noqa: E402  the production command line

POLICIES = {
    "x-rate-limit": {"limit": 1_000_000, "window_seconds": 3600, "key": "ip"},
    "x-cors": {"origins": ["https://app.example"], "methods": ["GET"], "expose_headers": ["X-Cost"]},
}


def tree_cpu_seconds(pid: int) -> float:
    """CPU time (user + system) the server and its workers have used so far (/proc)."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0
    for p in [pid, *descendants(pid)]:
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rpartition(")")[2].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / ticks


def _forget_counts(redis_url: str | None) -> None:
    """A fresh database reuses route ids, so an earlier run's counts (`ratelimit:{route id}:…`)
    would still be spent: they are deleted (SCAN, in REDIS_URL's database only)."""
    if not redis_url:
        return
    import redis

    client = redis.Redis.from_url(redis_url)
    for key in client.scan_iter("ratelimit:*", count=1000):
        client.delete(key)
    client.close()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--duration", type=int, default=4, help="seconds per wrk run")
    parser.add_argument("--connections", default="32", help="wrk connections, e.g. 32,256")
    parser.add_argument(
        "--breakdown",
        action="store_true",
        help="also a route with only the rate limit, and one with only CORS",
    )
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    if not shutil.which("wrk"):
        sys.exit("wrk is not installed (apt-get install -y wrk)")
    VAR.mkdir(parents=True, exist_ok=True)
    processes: list[subprocess.Popen] = []
    try:
        upstream_port, port = free_port(), free_port()
        upstream = f"http://127.0.0.1:{upstream_port}"
        processes.append(subprocess.Popen([PY, "-c", ASYNC_UPSTREAM, str(upstream_port)]))
        wait_http(f"{upstream}/hello")
        env = prepare_project(upstream)
        _forget_counts(env.get("REDIS_URL"))
        route = {"method": "GET", "backend": "bench-upstream", "auth_required": False}
        routes = VAR / "routes-policies.json"
        entries = [{**route, "path": "/plain/**"}, {**route, "path": "/pol/**", **POLICIES}]
        if args.breakdown:
            entries += [
                {**route, "path": "/rl/**", "x-rate-limit": POLICIES["x-rate-limit"]},
                {**route, "path": "/cors/**", "x-cors": POLICIES["x-cors"]},
            ]
        routes.write_text(json.dumps({"routes": entries}))
        subprocess.run(
            [PY, str(ROOT / "manage.py"), "load_routes", str(routes)],
            env=env,
            check=True,
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
        )
        server = subprocess.Popen(server_command(port), env=env, cwd=ROOT)
        processes.append(server)
        base = f"http://127.0.0.1:{port}"
        wait_http(f"{base}/healthz")
        origin = {"Origin": "https://app.example"}
        contenders = [
            Contender("route without policies", f"{base}/gw/plain/hello", origin),
            Contender("rate limit + CORS", f"{base}/gw/pol/hello", origin),
        ]
        if args.breakdown:
            contenders += [
                Contender("rate limit only", f"{base}/gw/rl/hello", origin),
                Contender("CORS only", f"{base}/gw/cors/hello", origin),
            ]
        for contender in contenders:
            warm(contender.url, contender.headers)
        levels = [int(n) for n in args.connections.split(",")]
        results: dict[tuple[str, int], list] = {}
        cpu: dict[tuple[str, int], list[float]] = {}
        for round_number in range(args.rounds):
            for level in levels:
                # Interleaved, and the order alternates, so load from elsewhere hits all alike.
                for contender in contenders if round_number % 2 == 0 else contenders[::-1]:
                    cpu_before = tree_cpu_seconds(server.pid)
                    result = run_wrk(contender, args.duration, level)
                    # The server's CPU per request: the policies' own cost, much steadier than
                    # req/s on a machine other work shares (Redis's CPU is not in it).
                    served = max(1.0, result.rps * args.duration)
                    cpu_us = (tree_cpu_seconds(server.pid) - cpu_before) / served * 1e6
                    results.setdefault((contender.name, level), []).append(result)
                    cpu.setdefault((contender.name, level), []).append(cpu_us)
                    print(
                        f"round {round_number + 1} c={level:<4} {contender.name:24} {result.rps:8.0f} req/s"
                        f"  p50 {result.p50_ms:6.2f} ms  p99 {result.p99_ms:6.2f} ms  errors {result.errors}"
                        f"  server CPU {cpu_us:6.0f} us/req",
                        flush=True,
                    )
                plain_rps = max(1.0, results[(contenders[0].name, level)][-1].rps)
                for contender in contenders[1:]:
                    ratio = results[(contender.name, level)][-1].rps / plain_rps
                    print(
                        f"round {round_number + 1} c={level:<4} ratio {contender.name}: {ratio:.2f}x",
                        flush=True,
                    )
        print(
            f"\nwrk -t2 -d{args.duration}s, {args.rounds} interleaved rounds;"
            " ratios to the route without policies"
        )
        for level in levels:
            plain = results[(contenders[0].name, level)]
            for contender in contenders[1:]:
                pairs = zip(results[(contender.name, level)], plain, strict=True)
                ratios = [r.rps / max(1.0, p.rps) for r, p in pairs]
                figures = ", ".join(f"{ratio:.2f}" for ratio in ratios)
                median = statistics.median(ratios)
                print(f"c={level:<4} {contender.name:20} per round {figures}  median {median:.2f}x")
            for contender in contenders:
                spent = cpu[(contender.name, level)]
                figures = ", ".join(f"{us:.0f}" for us in spent)
                print(
                    f"c={level:<4} {contender.name:24} server CPU us/req per round {figures}"
                    f"  median {statistics.median(spent):.0f}"
                )
        print("target >= 0.9x")
    finally:
        stop_processes(processes)


if __name__ == "__main__":
    main()
