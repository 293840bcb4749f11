"""CPU time per proxied request of the production server: this checkout vs a baseline, one run.

    .venv/bin/python benchmarks/gateway_cpu.py --baseline /path/to/other/checkout
                                               [--load fast:64,slow:256] [--duration 6] [--rounds 3]

Starts one upstream (2 uvloop processes; `/slow/…` answers after 100 ms, anything else at once),
the bare aiohttp reverse proxy of benchmarks/gateway_concurrency.py (2 processes), and the
production server (tests/support/servers.py::server_command, WEB_WORKERS=2) twice: from this
checkout and from --baseline (e.g. `git worktree add /tmp/base main`), on the same SQLite
database and routes. For each round, each load (`fast:<connections>` or `slow:<connections>`)
and each contender in turn: wrk for --duration seconds, with the utime+stime of the contender's
processes read from /proc before and after, divided by the requests wrk completed. CPU time per
request is robust to the other load of a shared machine, req/s is not (both are printed; the
best round of each is kept).

Run by hand, not in CI. Needs wrk; aiohttp comes from requirements-dev.txt.

Measured once, baseline = main on aiohttp, this = the gateway's own upstream client
(`--load fast:64,slow:256 --duration 6 --rounds 3`, best round each, shared 2-core machine):
    fast:64   baseline 224 µs CPU/request   this 159 µs (1.41x less)   aiohttp proxy 100 µs
    slow:256  baseline 335 µs CPU/request   this 243 µs (1.38x less)   aiohttp proxy 182 µs
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.gateway import PY, ROOT, SITE, free_port, prepare_project, wait_http, warm  # noqa: E402
from benchmarks.gateway_concurrency import (  # noqa: E402
    AIOHTTP_PROXY,
    UPSTREAM,
    descendants,
    raise_open_files_limit,
)
from tests.support.servers import server_command  # noqa: E402

TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except FileNotFoundError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / TICKS


def wrk(url: str, duration: int, connections: int) -> tuple[int, float, str]:
    out = subprocess.run(
        ["wrk", "-t2", f"-c{connections}", f"-d{duration}s", "--latency", "--timeout", "10s", url],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    count = int(re.search(r"(\d+) requests in", out).group(1))
    rate = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    p99 = re.search(r"\s99%\s+(\S+)", out).group(1)
    return count, rate, p99


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline", type=Path, required=True, help="another checkout of the project")
    parser.add_argument("--load", default="fast:64,slow:256")
    parser.add_argument("--duration", type=int, default=6)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    raise_open_files_limit(20000)
    baseline = args.baseline.resolve()

    up, this_port, base_port, aio_port = free_port(), free_port(), free_port(), free_port()
    upstream_url = f"http://127.0.0.1:{up}"
    procs = [subprocess.Popen([PY, "-c", UPSTREAM, str(up)]) for _ in range(2)]
    env = prepare_project(upstream_url)
    base_env = {**env, "PYTHONPATH": os.pathsep.join([str(baseline), str(SITE)])}
    this = subprocess.Popen(server_command(this_port), env=env, cwd=ROOT)
    base = subprocess.Popen(server_command(base_port), env=base_env, cwd=baseline)
    procs += [this, base]
    site_env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SITE), str(ROOT)])}
    aio = [
        subprocess.Popen([PY, "-c", AIOHTTP_PROXY, str(aio_port), upstream_url], env=site_env)
        for _ in range(2)
    ]
    procs += aio
    best: dict[tuple[str, str], tuple[float, float, str]] = {}
    try:
        for port in (this_port, base_port):
            wait_http(f"http://127.0.0.1:{port}/healthz", 60)
        wait_http(f"http://127.0.0.1:{aio_port}/x", 60)
        contenders = [
            ("baseline", base_port, "/gw", [base.pid, *descendants(base.pid)]),
            ("this", this_port, "/gw", [this.pid, *descendants(this.pid)]),
            ("aiohttp-proxy", aio_port, "", [p.pid for p in aio]),
        ]
        for round_no in range(1, args.rounds + 1):
            for spec in args.load.split(","):
                kind, connections = spec.split(":")
                for name, port, prefix, pids in contenders:
                    path = prefix + ("/bench/slow/hello" if kind == "slow" else "/bench/hello")
                    url = f"http://127.0.0.1:{port}{path}"
                    warm(url, {}, 50)
                    before = cpu_seconds(pids)
                    count, rate, p99 = wrk(url, args.duration, int(connections))
                    per_request = 1e6 * (cpu_seconds(pids) - before) / max(count, 1)
                    print(
                        f"round {round_no} {spec:9} {name:14} {rate:7.0f} req/s  p99 {p99:>8}  "
                        f"{per_request:6.0f} µs CPU/request",
                        flush=True,
                    )
                    key = (spec, name)
                    old = best.get(key)
                    best[key] = (
                        max(rate, old[0]) if old else rate,
                        min(per_request, old[1]) if old else per_request,
                        p99,
                    )
    finally:
        for proc in reversed(procs):  # the proxies before their upstream: no errors at shutdown
            proc.terminate()
        for proc in procs:
            proc.wait()
    print(f"\nbest of {args.rounds} rounds (baseline: {baseline}):")
    for spec in args.load.split(","):
        for name in ("baseline", "this", "aiohttp-proxy"):
            rate, per_request, _ = best[(spec, name)]
            print(f"  {spec:9} {name:14} {rate:7.0f} req/s  {per_request:6.0f} µs CPU/request")
        ratio = best[(spec, "baseline")][1] / best[(spec, "this")][1]
        print(f"  {spec:9} baseline/this CPU per request = {ratio:.2f}x")


if __name__ == "__main__":
    main()
