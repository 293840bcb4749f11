"""Gateway concurrency against its peers (issue 9), all measured in ONE run with the same wrk load.

    .venv/bin/python benchmarks/gateway_concurrency.py [--duration 10] [--idle 10000]
                                                       [--slow-concurrency 256,1024,4096]
                                                       [--fast-concurrency 8,64]

Contenders: nginx as a reverse proxy, a bare aiohttp reverse proxy (2 processes, SO_REUSEPORT),
django-revproxy and a minimal Django view (both under the production server), and Gatehouse
(`/gw`, the production command line tests/support/servers.py::server_command, what scripts/serve
runs). One upstream (2 uvloop processes) answers `/slow/…` after 100 ms and anything else at once.

Measured: with the 100 ms upstream at each --slow-concurrency, req/s, p99 and socket errors;
with the fast upstream at each --fast-concurrency, req/s and p50/p99; the memory per idle
keep-alive connection (RSS growth of the contender's processes after --idle connections each
made one request and stay open, divided by --idle). Then the ratios Gatehouse/aiohttp,
Gatehouse/nginx and Gatehouse/revproxy of that same run.

Run by hand, not in CI. Needs wrk and nginx (`apt-get install -y nginx wrk`); aiohttp and
django-revproxy are pip-installed into var/bench/site for the benchmark only. The database is
a fresh SQLite file (benchmarks/gateway.py prepares it), REDIS_URL when set.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.gateway import (  # noqa: E402
    PY,
    ROOT,
    SITE,
    VAR,
    Contender,
    Result,
    free_port,
    prepare_project,
    run_wrk,
    stop_processes,
    wait_http,
    warm,
)

UPSTREAM = """
import asyncio, os, socket, sys
import uvloop
BODY = b"HTTP/1.1 200 OK\\r\\nContent-Type: text/plain\\r\\nContent-Length: 5\\r\\n\\r\\nhello"
async def handle(reader, writer):
    try:
        while True:
            head = await reader.readuntil(b"\\r\\n\\r\\n")
            if b"/slow" in head.split(b"\\r\\n", 1)[0]:
                await asyncio.sleep(0.1)
            writer.write(BODY)
    except (asyncio.IncompleteReadError, ConnectionError, asyncio.LimitOverrunError):
        writer.close()
async def main():
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind(("127.0.0.1", int(sys.argv[1])))
    server = await asyncio.start_server(handle, sock=sock, backlog=4096)
    await server.serve_forever()
uvloop.run(main())
"""

AIOHTTP_PROXY = """
import socket, sys
import aiohttp
from aiohttp import web
UPSTREAM = sys.argv[2]
HOP = {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade", "host",
       "content-length"}
async def session_ctx(app):
    app["s"] = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0), auto_decompress=False)
    yield
    await app["s"].close()
async def proxy(request):
    headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP}
    async with request.app["s"].request(request.method, UPSTREAM + request.raw_path,
                                        headers=headers, data=await request.read()) as r:
        body = await r.read()
        out = {k: v for k, v in r.headers.items() if k.lower() not in HOP}
        return web.Response(status=r.status, body=body, headers=out)
app = web.Application()
app.cleanup_ctx.append(session_ctx)
app.router.add_route("*", "/{tail:.*}", proxy)
sock = socket.socket()
sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
sock.bind(("127.0.0.1", int(sys.argv[1])))
web.run_app(app, sock=sock, access_log=None, print=None, backlog=4096)
"""


def start_nginx(upstream_port: int, proxy_port: int) -> subprocess.Popen:
    prefix = Path(tempfile.mkdtemp(prefix="nginx-", dir=VAR))
    (prefix / "logs").mkdir()
    conf = prefix / "nginx.conf"
    conf.write_text(
        textwrap.dedent(
            f"""
            worker_processes 2;
            worker_rlimit_nofile 30000;
            error_log {prefix}/logs/error.log warn;
            pid {prefix}/nginx.pid;
            events {{ worker_connections 12000; }}
            http {{
              access_log off;
              client_body_temp_path {prefix}/body; proxy_temp_path {prefix}/proxy;
              fastcgi_temp_path {prefix}/fcgi; uwsgi_temp_path {prefix}/uwsgi; scgi_temp_path {prefix}/scgi;
              keepalive_requests 1000000; keepalive_timeout 120s;
              upstream app {{ server 127.0.0.1:{upstream_port}; keepalive 512; }}
              server {{
                listen 127.0.0.1:{proxy_port} backlog=4096;
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


def ensure_aiohttp() -> bool:
    try:
        import aiohttp  # noqa: F401

        return True
    except ImportError:
        pass
    if not (SITE / "aiohttp").exists():
        subprocess.run([PY, "-m", "pip", "install", "-q", "--target", str(SITE), "aiohttp"], check=True)
    return True


# --- memory per idle keep-alive connection ------------------------------------------------------


def tree_rss_kb(pid: int) -> int:
    total = 0
    for p in [pid, *descendants(pid)]:
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except OSError:
            pass
    return total


def descendants(pid: int) -> list[int]:
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rpartition(")")[2].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            if ppid == pid:
                out.append(int(entry.name))
    return out + [g for c in out for g in descendants(c)]


async def _hold_idle(port: int, path: str, count: int) -> tuple[list, int]:
    gate = asyncio.Semaphore(256)
    writers: list = []
    failures = 0
    request = f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode()

    async def one() -> None:
        nonlocal failures
        async with gate:
            try:
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
                writer.write(request)
                head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
                length = next(
                    (int(v) for k, _, v in (ln.partition(b":") for ln in head.split(b"\r\n"))
                     if k.strip().lower() == b"content-length"),
                    0,
                )  # fmt: skip
                await reader.readexactly(length)
                writers.append(writer)
            except (TimeoutError, OSError, asyncio.IncompleteReadError):
                failures += 1

    await asyncio.gather(*(one() for _ in range(count)))
    return writers, failures


def idle_memory(pids: list[int], port: int, path: str, count: int) -> tuple[float, int]:
    """kB of RSS per idle keep-alive connection over the processes `pids` (and their children),
    and how many connections could not be opened. The connections are opened, held and closed
    inside one event loop (a writer closed after its loop ended would leak)."""

    async def run() -> tuple[float, int]:
        before = sum(tree_rss_kb(pid) for pid in pids)
        writers, failures = await _hold_idle(port, path, count)
        await asyncio.sleep(1)
        after = sum(tree_rss_kb(pid) for pid in pids)
        for writer in writers:
            writer.close()
        await asyncio.gather(*(w.wait_closed() for w in writers), return_exceptions=True)
        return (after - before) / max(1, len(writers)), failures

    return asyncio.run(run())


def raise_open_files_limit(wanted: int) -> None:
    """10 000 client sockets need more than the usual 1 024 descriptors."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = min(hard, max(soft, wanted)) if hard != resource.RLIM_INFINITY else max(soft, wanted)
    resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))


# --- the run ------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--duration", type=int, default=10, help="seconds per wrk run")
    parser.add_argument("--slow-concurrency", default="256,1024,4096")
    parser.add_argument("--fast-concurrency", default="8,64")
    parser.add_argument("--idle", type=int, default=10000, help="idle keep-alive connections")
    args = parser.parse_args()
    for tool in ("wrk", "nginx"):
        if not shutil.which(tool):
            raise SystemExit(f"{tool} is missing: apt-get install -y nginx wrk")
    VAR.mkdir(parents=True, exist_ok=True)
    raise_open_files_limit(args.idle + 1024)
    ensure_aiohttp()
    site_env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SITE), str(ROOT)])}

    upstream_port, nginx_port, aio_port, gh_port = (free_port() for _ in range(4))
    upstream_url = f"http://127.0.0.1:{upstream_port}"
    processes: list[subprocess.Popen] = []
    try:
        for _ in range(2):
            processes.append(subprocess.Popen([PY, "-c", UPSTREAM, str(upstream_port)]))
        env = prepare_project(upstream_url)
        env["WEB_MAX_CONNECTIONS"] = str(max(args.idle, 10000))
        nginx = start_nginx(upstream_port, nginx_port)
        processes.append(nginx)
        aio = [
            subprocess.Popen([PY, "-c", AIOHTTP_PROXY, str(aio_port), upstream_url], env=site_env)
            for _ in range(2)
        ]
        processes.extend(aio)
        from tests.support.servers import server_command

        gatehouse = subprocess.Popen(server_command(gh_port), env=env, cwd=ROOT)
        processes.append(gatehouse)
        for port, path in ((nginx_port, "/x"), (aio_port, "/x"), (gh_port, "/healthz")):
            wait_http(f"http://127.0.0.1:{port}{path}", 60)

        def contenders(slow: bool) -> dict[str, Contender]:
            up = "/slow/hello" if slow else "/hello"
            found = {
                "nginx": Contender("nginx proxy", f"http://127.0.0.1:{nginx_port}/bench{up}"),
                "aiohttp": Contender("aiohttp proxy (2 proc)", f"http://127.0.0.1:{aio_port}/bench{up}"),
                "revproxy": Contender("django-revproxy", f"http://127.0.0.1:{gh_port}/bench/revproxy{up}"),
                "gatehouse": Contender("Gatehouse /gw", f"http://127.0.0.1:{gh_port}/gw/bench{up}"),
            }
            if not slow:
                found["minimal"] = Contender(
                    "minimal Django view", f"http://127.0.0.1:{gh_port}/bench/minimal"
                )
            return found

        for contender in contenders(False).values():
            warm(contender.url, {}, 50)

        table: dict[tuple[str, int], Result] = {}
        print(f"\nwrk -t2 -d{args.duration}s, one run; upstream 2 uvloop processes", flush=True)
        for slow, levels in ((True, args.slow_concurrency), (False, args.fast_concurrency)):
            for level in (int(n) for n in levels.split(",")):
                for key, contender in contenders(slow).items():
                    result = run_wrk(contender, args.duration, level)
                    table[(("slow-" if slow else "fast-") + key, level)] = result
                    print(
                        f"{'100 ms' if slow else 'fast'} upstream c={level:<5} {contender.name:<24}"
                        f"{result.rps:>9.0f} req/s  p50 {result.p50_ms:7.1f} ms  p99 {result.p99_ms:7.1f} ms"
                        f"  errors {result.errors}",
                        flush=True,
                    )

        print(f"\nmemory per idle keep-alive connection ({args.idle} connections each):")
        memory = {}
        for key, pids, port, path in (
            ("nginx", [nginx.pid], nginx_port, "/bench/hello"),
            ("aiohttp", [p.pid for p in aio], aio_port, "/bench/hello"),
            ("gatehouse", [gatehouse.pid], gh_port, "/gw/bench/hello"),
        ):
            kb, failed = idle_memory(pids, port, path, args.idle)
            memory[key] = kb
            print(f"  {key:<10} {kb:6.1f} kB/connection  ({failed} could not be opened)", flush=True)

        def ratio(a: str, b: str, level: int) -> str:
            x, y = table.get((a, level)), table.get((b, level))
            return f"{x.rps / y.rps:.2f}" if x and y and y.rps else "n/a"

        print("\nratios (same run, req/s):")
        for level in (int(n) for n in args.slow_concurrency.split(",")):
            print(
                f"  100 ms c={level:<5} Gatehouse/aiohttp {ratio('slow-gatehouse', 'slow-aiohttp', level)}"
                f"  Gatehouse/nginx {ratio('slow-gatehouse', 'slow-nginx', level)}"
                f"  Gatehouse/revproxy {ratio('slow-gatehouse', 'slow-revproxy', level)}"
            )
        for level in (int(n) for n in args.fast_concurrency.split(",")):
            print(
                f"  fast   c={level:<5} Gatehouse/aiohttp {ratio('fast-gatehouse', 'fast-aiohttp', level)}"
                f"  Gatehouse/nginx {ratio('fast-gatehouse', 'fast-nginx', level)}"
                f"  Gatehouse/revproxy {ratio('fast-gatehouse', 'fast-revproxy', level)}"
                f"  Gatehouse/minimal view {ratio('fast-gatehouse', 'fast-minimal', level)}"
            )
    finally:
        stop_processes(processes, timeout=25)


if __name__ == "__main__":
    main()
