"""A route with policies against the same route without, in ONE run (target ≥ 0.9×).

    .venv/bin/python benchmarks/gateway_policies.py [--duration 4] [--connections 32] [--rounds 2]

Same upstream (asyncio, 5-byte body), same production server (tests/support/servers.py),
two routes differing only by their policies: `/plain/**` none, `/pol/**` a rate limit that is
never reached (key "ip", counted in Redis when REDIS_URL is set — one EVALSHA per request) plus
CORS, requests carrying an allowed `Origin`. wrk runs interleaved rounds; the ratio of the best
round of each is printed. Needs wrk (apt-get install wrk).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.gateway import (  # noqa: E402
    ASYNC_UPSTREAM,
    PY,
    ROOT,
    VAR,
    Contender,
    free_port,
    prepare_project,
    run_wrk,
    server_commands,
    wait_http,
    warm,
)

POLICIES = {
    "x-rate-limit": {"limit": 1_000_000, "window_seconds": 3600, "key": "ip"},
    "x-cors": {"origins": ["https://app.example"], "methods": ["GET"], "expose_headers": ["X-Cost"]},
}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--duration", type=int, default=4, help="seconds per wrk run")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=2)
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
        route = {"method": "GET", "backend": "bench-upstream", "auth_required": False}
        routes = VAR / "routes-policies.json"
        routes.write_text(
            json.dumps({"routes": [{**route, "path": "/plain/**"}, {**route, "path": "/pol/**", **POLICIES}]})
        )
        subprocess.run(
            [PY, str(ROOT / "manage.py"), "load_routes", str(routes)],
            env=env,
            check=True,
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
        )
        processes.append(subprocess.Popen(server_commands(port)["asgi"], env=env, cwd=ROOT))
        base = f"http://127.0.0.1:{port}"
        wait_http(f"{base}/healthz")
        origin = {"Origin": "https://app.example"}
        contenders = [
            Contender("route without policies", f"{base}/gw/plain/hello", origin),
            Contender("rate limit + CORS", f"{base}/gw/pol/hello", origin),
        ]
        for contender in contenders:
            warm(contender.url, contender.headers)
        for round_number in range(args.rounds):
            for contender in contenders:
                result = run_wrk(contender, args.duration, args.connections)
                contender.results.append(result)
                print(f"round {round_number + 1}: {contender.name:24} {result.rps:8.0f} req/s", flush=True)
        plain, policed = (max(c.results, key=lambda r: r.rps) for c in contenders)
        print(f"\nwrk -c{args.connections} -d{args.duration}s, best of {args.rounds} interleaved rounds")
        for contender, best in zip(contenders, (plain, policed), strict=True):
            latency = f"p50 {best.p50_ms:.2f} ms  p99 {best.p99_ms:.2f} ms"
            print(f"{contender.name:24} {best.rps:8.0f} req/s  {latency}  errors {best.errors}")
        print(f"ratio policies / none: {policed.rps / plain.rps:.2f}x (target >= 0.9x)")
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()


if __name__ == "__main__":
    main()
