"""Which async HTTP client for the upstream calls: aiohttp, httpx, the gateway's own; same upstream, same run.

    .venv/bin/python benchmarks/async_clients.py [--requests 2000] [--concurrency 32] [--rounds 3]

One local upstream (a separate process: a bare uvloop protocol answering a fixed keep-alive 200)
and, in this process on uvloop, --requests pooled GETs with --concurrency in flight through:
- aiohttp: one ClientSession / TCPConnector, configured as the gateway used it before;
- upstream_client: `gateway.upstream_client.Pool`, the gateway's own HTTP/1.1 client;
- httpx: one AsyncClient with the same pool size;
- Gatehouse's `upstream_forward` itself (upstream_client plus the budget, circuit, retries,
  metrics, header rules).
Each round measures every client in turn; the best round of each is kept. Prints requests/s and
CPU µs per request of this process (the driver loop included, the same for every client; CPU
time is the robust figure on a shared machine, req/s is not), and the ratios. Run by hand, not
in CI (httpx comes from requirements-dev.txt for this script only).

Measured (one run, 5 000 GETs, 32 in flight, best of 3, this shared 2-core machine at load ~11):
    aiohttp           19 269 req/s   41.9 µs CPU/request
    upstream_client   57 919 req/s   10.3 µs CPU/request   (4.06x less CPU than aiohttp)
    httpx                412 req/s 1225.5 µs CPU/request
    upstream_forward  30 710 req/s   23.0 µs CPU/request
The whole gateway (benchmarks/gateway_cpu.py, production server, wrk c=64 to a fast upstream,
best of 3): 224 µs CPU per proxied request on aiohttp, 159 µs on upstream_client (1.41x less);
the bare aiohttp reverse proxy of benchmarks/gateway_concurrency.py took 100 µs.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import socket
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

_ANSWER = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Type: text/plain\r\n\r\nok"


def _serve_upstream(sock: socket.socket) -> None:
    import uvloop

    class Upstream(asyncio.Protocol):
        def connection_made(self, transport):  # type: ignore[no-untyped-def]
            self.transport = transport
            self.buffer = b""

        def data_received(self, data: bytes) -> None:
            self.buffer += data
            while b"\r\n\r\n" in self.buffer:
                _, self.buffer = self.buffer.split(b"\r\n\r\n", 1)
                self.transport.write(_ANSWER)

    async def main() -> None:
        server = await asyncio.get_running_loop().create_server(Upstream, sock=sock)
        await server.serve_forever()

    uvloop.run(main())


async def _drive(call, requests: int, concurrency: int) -> tuple[float, float]:  # type: ignore[no-untyped-def]
    """(requests/s, CPU µs per request of this process) for `requests` awaits of `call()`,
    `concurrency` at a time. CPU time is the robust figure on a shared machine."""
    remaining = requests

    async def worker() -> None:
        nonlocal remaining
        while remaining > 0:
            remaining -= 1
            await call()

    started, cpu = time.perf_counter(), time.process_time()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return requests / (time.perf_counter() - started), 1e6 * (time.process_time() - cpu) / requests


async def _aiohttp(url: str, requests: int, concurrency: int) -> tuple[float, float]:
    import aiohttp

    connector = aiohttp.TCPConnector(limit=0, limit_per_host=concurrency)
    async with aiohttp.ClientSession(
        connector=connector,
        cookie_jar=aiohttp.DummyCookieJar(),
        auto_decompress=False,
        skip_auto_headers=("User-Agent", "Accept", "Accept-Encoding"),
    ) as session:

        async def call() -> None:
            async with session.get(url, allow_redirects=False) as response:
                await response.read()

        await call()  # warm the pool
        return await _drive(call, requests, concurrency)


async def _lean(url: str, requests: int, concurrency: int) -> tuple[float, float]:
    from gateway.upstream_client import Pool

    pool = Pool(asyncio.get_running_loop(), url, size=concurrency, keepalive=15.0)
    headers = [("Host", url.split("//", 1)[1])]

    async def call() -> None:
        response = await pool.request("GET", "/", headers)
        await response.read()
        response.release()

    try:
        await call()
        return await _drive(call, requests, concurrency)
    finally:
        pool.close()


async def _httpx(url: str, requests: int, concurrency: int) -> tuple[float, float]:
    import httpx

    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(limits=limits, follow_redirects=False, trust_env=False) as client:

        async def call() -> None:
            response = await client.get(url)
            await response.aread()

        await call()
        return await _drive(call, requests, concurrency)


async def _gatehouse(url: str, requests: int, concurrency: int) -> tuple[float, float]:
    from gateway.services.upstream import upstream_close, upstream_forward
    from gateway.types import ResolvedRoute

    route = ResolvedRoute(id=1, methods=("GET",), path="/b", service="bench", targets=(url,))

    async def call() -> None:
        answer = await upstream_forward(
            route=route, method="GET", path="/b", query_string=b"", headers=[("Host", "")], body=b""
        )
        await answer.release()

    try:
        await call()
        return await _drive(call, requests, concurrency)
    finally:
        await upstream_close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()

    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings.test")
    import django
    import uvloop

    django.setup()

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(1024)
    url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    upstream = multiprocessing.get_context("fork").Process(target=_serve_upstream, args=(sock,), daemon=True)
    upstream.start()
    clients = {
        "aiohttp": _aiohttp,
        "upstream_client": _lean,
        "httpx": _httpx,
        "upstream_forward": _gatehouse,
    }
    best = {name: (0.0, float("inf")) for name in clients}
    try:
        for round_no in range(1, args.rounds + 1):
            for name, client in clients.items():
                rate, cpu = uvloop.run(client(url, args.requests, args.concurrency))
                best[name] = (max(best[name][0], rate), min(best[name][1], cpu))
                print(f"round {round_no} {name:17} {rate:8.0f} req/s {cpu:7.1f} µs CPU/request")
    finally:
        upstream.terminate()
        upstream.join()
    print(f"\n{args.requests} pooled GETs, {args.concurrency} in flight, best of {args.rounds} rounds:")
    for name, (rate, cpu) in best.items():
        print(f"  {name:17} {rate:8.0f} req/s {cpu:7.1f} µs CPU/request")
    aiohttp_rate, aiohttp_cpu = best["aiohttp"]
    lean_rate, lean_cpu = best["upstream_client"]
    print(f"aiohttp / httpx = {aiohttp_rate / best['httpx'][0]:.2f}x req/s")
    print(
        f"upstream_client / aiohttp = {lean_rate / aiohttp_rate:.2f}x req/s, "
        f"{aiohttp_cpu / lean_cpu:.2f}x less CPU per request"
    )
    print(f"upstream_forward / aiohttp = {best['upstream_forward'][0] / aiohttp_rate:.2f}x req/s")

if __name__ == "__main__":
    main()
