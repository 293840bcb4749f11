"""Gateway throughput against its peers, all measured in ONE run with the same load tool.

    .venv/bin/python benchmarks/gateway.py [--duration 10] [--connections 32] [--rounds 2]

Starts one fast upstream (nginx answering a static 5-byte body; a tiny asyncio server when nginx
is missing), nginx as a reverse proxy to it, and the project under each production-server
(the production server, tests/support/servers.py::server_command), then runs `wrk` against every
contender and prints requests/s, p50/p99 latency and the ratios the issue asks for. `/gw` exists
only on the production server's ASGI entrance (config/asgi.py), so WSGI servers (gunicorn,
granian's WSGI interface) are no contenders for it any more; ASGI servers are compared in
benchmarks/asgi_servers.py.

Needs: wrk (apt-get install wrk), optionally nginx. django-revproxy is pip-installed into
var/bench/site for the benchmark only (never into requirements.txt). The database is a fresh
SQLite file under var/bench; REDIS_URL is used when set (as in production), else local memory.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
VAR = ROOT / "var" / "bench"
SITE = VAR / "site"  # django-revproxy lives here, outside the project's venv
PY = sys.executable
sys.path.insert(0, str(ROOT))


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


# --- Upstream and nginx -----------------------------------------------------------------------


def start_nginx(upstream_port: int, proxy_port: int) -> subprocess.Popen:
    prefix = Path(tempfile.mkdtemp(prefix="nginx-", dir=VAR))
    (prefix / "logs").mkdir()
    conf = prefix / "nginx.conf"
    conf.write_text(
        textwrap.dedent(
            f"""
            worker_processes 1;
            error_log {prefix}/logs/error.log warn;
            pid {prefix}/nginx.pid;
            events {{ worker_connections 4096; }}
            http {{
              access_log off;
              client_body_temp_path {prefix}/body; proxy_temp_path {prefix}/proxy;
              fastcgi_temp_path {prefix}/fcgi; uwsgi_temp_path {prefix}/uwsgi; scgi_temp_path {prefix}/scgi;
              keepalive_requests 1000000;
              upstream app {{ server 127.0.0.1:{upstream_port}; keepalive 64; }}
              server {{
                listen 127.0.0.1:{upstream_port};
                location / {{ default_type text/plain; return 200 "hello"; }}
              }}
              server {{
                listen 127.0.0.1:{proxy_port};
                location / {{
                  proxy_pass http://app;
                  proxy_http_version 1.1;
                  proxy_set_header Connection "";
                }}
              }}
            }}
            """
        )
    )
    return subprocess.Popen(["nginx", "-p", str(prefix), "-c", str(conf), "-g", "daemon off;"])


ASYNC_UPSTREAM = """
import asyncio, sys
BODY = b"HTTP/1.1 200 OK\\r\\nContent-Type: text/plain\\r\\nContent-Length: 5\\r\\n\\r\\nhello"
async def handle(reader, writer):
    try:
        while True:
            head = await reader.readuntil(b"\\r\\n\\r\\n")
            writer.write(BODY)
    except (asyncio.IncompleteReadError, ConnectionError):
        writer.close()
async def main():
    server = await asyncio.start_server(handle, "127.0.0.1", int(sys.argv[1]), backlog=1024)
    await server.serve_forever()
asyncio.run(main())
"""


# --- The project under a server -----------------------------------------------------------------


def project_env(upstream_url: str, db_path: Path) -> dict[str, str]:
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "benchmarks.settings",
        "SECRET_KEY": "benchmark-only-secret-key",
        "DEBUG": "false",
        "DATABASE_URL": f"sqlite:///{db_path}",
        "CELERY_BROKER_URL": "memory://",
        "BENCH_UPSTREAM_URL": upstream_url,
        "PYTHONPATH": os.pathsep.join([str(ROOT), str(SITE)]),
        "WEB_WORKERS": os.environ.get("WEB_WORKERS", "2"),
        "WEB_THREADS": os.environ.get("WEB_THREADS", "16"),
        "LOG_LEVEL": "WARNING",
    }
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    return env


def prepare_project(upstream_url: str) -> dict[str, str]:
    if not (SITE / "revproxy").exists():
        subprocess.run(
            [PY, "-m", "pip", "install", "-q", "--no-deps", "--target", str(SITE), "django-revproxy==0.13.0"],
            check=True,
        )
    db_path = VAR / "bench.sqlite3"
    for stale in VAR.glob("bench.sqlite3*"):
        stale.unlink()
    env = project_env(upstream_url, db_path)
    routes = VAR / "routes.json"
    routes.write_text(
        json.dumps(
            {
                "services": [{"name": "bench-upstream", "targets": [upstream_url]}],
                "routes": [
                    {
                        "method": "GET",
                        "path": "/bench/**",
                        "backend": "bench-upstream",
                        "auth_required": False,
                    }
                ],
            }
        )
    )
    manage = [PY, str(ROOT / "manage.py")]
    subprocess.run([*manage, "migrate", "--noinput", "-v", "0"], env=env, check=True, cwd=ROOT)
    subprocess.run(
        [*manage, "load_routes", str(routes)], env=env, check=True, cwd=ROOT, stdout=subprocess.DEVNULL
    )
    return env


def server_commands(port: int) -> dict[str, list[str]]:
    from tests.support.servers import server_command  # the production command line, one place

    return {"asgi": server_command(port)}


def stop_processes(processes: list[subprocess.Popen], timeout: float = 10) -> None:
    """Terminate every process started for a run, then kill what is still there after `timeout` s."""
    for process in processes:
        process.terminate()
    for process in processes:
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()


# --- Load -------------------------------------------------------------------------------------


@dataclass
class Result:
    rps: float
    p50_ms: float
    p99_ms: float
    errors: int


@dataclass
class Contender:
    name: str
    url: str
    headers: dict[str, str] = field(default_factory=dict)
    results: list[Result] = field(default_factory=list)

    def best(self) -> Result:
        return max(self.results, key=lambda r: r.rps)


def _ms(value: str) -> float:
    number, unit = re.match(r"([\d.]+)(us|ms|s)", value).groups()
    return float(number) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]


def run_wrk(contender: Contender, duration: int, connections: int) -> Result:
    command = ["wrk", "-t2", f"-c{connections}", f"-d{duration}s", "--latency", "--timeout", "10s"]
    for name, value in contender.headers.items():
        command += ["-H", f"{name}: {value}"]
    output = subprocess.run([*command, contender.url], capture_output=True, text=True, check=True).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", output).group(1))
    p50 = _ms(re.search(r"\s50%\s+(\S+)", output).group(1))
    p99 = _ms(re.search(r"\s99%\s+(\S+)", output).group(1))
    errors = 0
    if found := re.search(r"Non-2xx or 3xx responses:\s+(\d+)", output):
        errors += int(found.group(1))
    if found := re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output):
        errors += sum(int(n) for n in found.groups())
    return Result(rps, p50, p99, errors)


def warm(url: str, headers: dict[str, str], count: int = 200) -> None:
    request = urllib.request.Request(url, headers=headers)
    for _ in range(count):
        with urllib.request.urlopen(request, timeout=5) as response:
            response.read()


def project_contenders(base: str, server: str) -> list[Contender]:
    """The contenders served by the project under `server`.

    Add a contender here to measure another path (e.g. the gateway with the full auth path:
    a route with auth_required=True and a Bearer token in `headers`).
    """
    return [
        Contender(f"gateway [{server}]", f"{base}/gw/bench/hello"),
        Contender(f"minimal Django view [{server}]", f"{base}/bench/minimal"),
        Contender(f"django-revproxy [{server}]", f"{base}/bench/revproxy/hello"),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--duration", type=int, default=10, help="seconds per wrk run")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=2, help="each contender is measured this often")
    parser.add_argument("--servers", default="asgi", help="first = production server (asgi only)")
    args = parser.parse_args()
    if not shutil.which("wrk"):
        sys.exit("wrk is not installed (apt-get install -y wrk)")
    VAR.mkdir(parents=True, exist_ok=True)
    processes: list[subprocess.Popen] = []
    try:
        upstream_port, proxy_port = free_port(), free_port()
        upstream = f"http://127.0.0.1:{upstream_port}"
        contenders = [Contender("direct (upstream)", f"{upstream}/hello")]
        if shutil.which("nginx"):
            processes.append(start_nginx(upstream_port, proxy_port))
            wait_http(f"http://127.0.0.1:{proxy_port}/hello")
            contenders.append(Contender("nginx proxy", f"http://127.0.0.1:{proxy_port}/hello"))
        else:
            processes.append(subprocess.Popen([PY, "-c", ASYNC_UPSTREAM, str(upstream_port)]))
            print("nginx not installed: asyncio upstream, no nginx contender")
        wait_http(f"{upstream}/hello")
        env = prepare_project(upstream)
        from benchmarks.gateway_auth import AuthBench  # token service + RBAC resolver (auth path)

        auth = AuthBench()
        env = auth.prepare(env, upstream_url=upstream, directory=VAR)

        servers = args.servers.split(",")
        ports = {server: free_port() for server in servers}
        for server in servers:
            processes.append(subprocess.Popen(server_commands(ports[server])[server], env=env, cwd=ROOT))
        for server in servers:
            base = f"http://127.0.0.1:{ports[server]}"
            wait_http(f"{base}/healthz")
            server_contenders = project_contenders(base, server)
            # valid RS256 token, JWKS and RBAC cached after warm-up, permission check, proxy
            auth_name, auth_url = f"gateway full auth path [{server}]", f"{base}/gw/bench-auth/hello"
            server_contenders.append(Contender(auth_name, auth_url, auth.headers()))
            for contender in server_contenders:
                warm(contender.url, contender.headers)
            contenders += server_contenders

        for round_number in range(args.rounds):  # interleaved: background load hits everyone alike
            for contender in contenders:
                result = run_wrk(contender, args.duration, args.connections)
                contender.results.append(result)
                print(f"round {round_number + 1}: {contender.name:38} {result.rps:9.0f} req/s", flush=True)
        report(contenders, servers, args)
    finally:
        stop_processes(processes)


def report(contenders: list[Contender], servers: list[str], args: argparse.Namespace) -> None:
    by_name = {c.name: c.best() for c in contenders}
    print(
        f"\nwrk -t2 -c{args.connections} -d{args.duration}s, best of {args.rounds} interleaved rounds, "
        f"{os.cpu_count()} CPUs shared with the load generator (and anything else running)"
    )
    print(f"{'contender':40} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'errors':>7}")
    for contender in contenders:
        best = contender.best()
        median = statistics.median(r.rps for r in contender.results)
        print(
            f"{contender.name:40} {best.rps:9.0f} {best.p50_ms:8.2f} {best.p99_ms:8.2f} {best.errors:7d}"
            f"   (rounds: {', '.join(f'{r.rps:.0f}' for r in contender.results)}; median {median:.0f})"
        )
    print()
    for server in servers:
        gateway = by_name[f"gateway [{server}]"].rps
        minimal = by_name[f"minimal Django view [{server}]"].rps
        revproxy = by_name[f"django-revproxy [{server}]"].rps
        print(f"[{server}] gateway / minimal Django view = {gateway / minimal:.2f}")
        print(f"[{server}] gateway / django-revproxy     = {gateway / revproxy:.2f}")
        full_auth = by_name[f"gateway full auth path [{server}]"].rps
        print(f"[{server}] full auth path / gateway no-auth = {full_auth / gateway:.2f} (target >= 0.80)")
        if "nginx proxy" in by_name:
            print(f"[{server}] gateway / nginx proxy         = {gateway / by_name['nginx proxy'].rps:.2f}")
    if len(servers) > 1:
        # The median of the rounds: one lucky round of a server that swings with background load
        # must not decide the choice.
        medians = {
            s: statistics.median(
                r.rps for r in next(c for c in contenders if c.name == f"gateway [{s}]").results
            )
            for s in servers
        }
        fastest = max(servers, key=medians.__getitem__)
        listed = ", ".join(f"{s} {m:.0f}" for s, m in medians.items())
        print(f"\nfastest server for the gateway workload (median req/s: {listed}): {fastest}")


if __name__ == "__main__":
    main()
