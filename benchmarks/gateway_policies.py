"""A route with policies against the same route without, in ONE run (target >= 0.9x).

    .venv/bin/python benchmarks/gateway_policies.py [--duration 3] [--rounds 5] [--connections 32,256]
        [--breakdown] [--profile]

Same upstream (asyncio, 5-byte body), the production server (`python -m config.server`, the asyncio
/gw pipeline, 2 workers), routes differing only by their policies: `/plain/**` none, `/pol/**` a
rate limit that is never reached (key "ip", counted in Redis when REDIS_URL is set) plus CORS,
requests carrying an allowed `Origin`. wrk runs interleaved rounds (the order alternates); each
round's ratio, the median ratio, and the server's CPU per request (/proc) are printed. Earlier
runs' `ratelimit:*` counts in REDIS_URL's database are deleted first. Needs wrk. `--profile`
then samples the server with py-spy (`--gil`) under each contender's load in turn and prints the
functions whose samples per 1000 requests differ most between them: where the policies' cost is.

Figures: docs/gateway-policies.md "Benchmark". On a quiet machine (load < 1), 2026-12-07,
--duration 4 --rounds 5 --connections 32,256, medians of the per-round ratios: 0.84x / 0.82x
before a key's lease renewal was shared, 0.90x / 0.93x after (per round 0.90, 0.90, 0.88, 0.90,
0.91 at c=32); server CPU per request at c=32, 164 -> 203 us before, 164 -> 181 us after.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
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


def differential_profile(server_pid: int, contenders: list[Contender], seconds: int, level: int) -> None:
    """py-spy under each contender's load; the functions' inclusive samples per 1000 requests,
    the largest differences from the first contender first."""
    spy = shutil.which("py-spy") or str(Path(PY).parent / "py-spy")
    if not Path(spy).exists() and not shutil.which("py-spy"):
        sys.exit("--profile needs py-spy (pip install py-spy)")
    per_request: dict[str, collections.Counter[str]] = {}
    for contender in contenders:
        collapsed = VAR / f"policies-{contender.name.replace(' ', '-')}.collapsed.txt"
        recorder = subprocess.Popen(
            [spy, "record", "--pid", str(server_pid), "--subprocesses", "--gil", "--rate", "250",
             "--duration", str(seconds + 1), "--format", "raw", "--output", str(collapsed)],
            stdout=subprocess.DEVNULL,
        )  # fmt: skip
        time.sleep(1)
        result = run_wrk(contender, seconds, level)
        recorder.wait(timeout=120)
        scale = 1000 / max(1.0, result.rps * seconds)
        counts: collections.Counter[str] = collections.Counter()
        for line in collapsed.read_text().splitlines():
            stack, _, count = line.rpartition(" ")
            if not stack:
                continue
            samples = int(count) * scale
            counts["(all samples)"] += samples
            for frame in {frame for frame in stack.split(";") if frame and not frame.startswith("process ")}:
                counts[frame] += samples
        per_request[contender.name] = counts
        print(f"profiled {contender.name}: {result.rps:.0f} req/s (py-spy attached)", flush=True)
    base = per_request[contenders[0].name]
    for contender in contenders[1:]:
        other = per_request[contender.name]
        names = set(base) | set(other)
        rows = sorted(names, key=lambda n: other.get(n, 0) - base.get(n, 0), reverse=True)[:30]
        print(f"\nsamples per 1000 requests: {contenders[0].name} -> {contender.name} (largest gains)")
        for name in rows:
            before, after = base.get(name, 0), other.get(name, 0)
            print(f"{before:8.1f} {after:8.1f} {after - before:+8.1f}  {name}")


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
    parser.add_argument("--profile", action="store_true", help="then a py-spy differential profile")
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
        if args.profile:
            differential_profile(server.pid, contenders, max(args.duration, 8), levels[0])
    finally:
        stop_processes(processes)


if __name__ == "__main__":
    main()
