"""Order placement sagas completed per second vs plain order creation, and the orchestrator's
own overhead per step, in ONE run (run by hand, not in CI).

    .venv/bin/python benchmarks/sagas.py [--orders 200] [--rounds 3]

In one process, on PostgreSQL (BENCH_DATABASE_URL, default
postgres://postgres@127.0.0.1:5432/gh_sagas_bench, created and migrated), against the demo
inventory service (demo/inventory.py, a real HTTP server on 127.0.0.1, in a thread).
Contenders, interleaved in rounds so drift on a shared machine hits both alike:

    plain   order_create (the order, its items, order.created, and the saga rows it now starts)
    saga    the same, then every step the workers would run: reserve_inventory (HTTP), the
            payment event (await_payment), confirm_inventory (HTTP), until the saga is completed

The steps are run by calling the step service directly (what the Celery task does), so the
figure excludes broker latency and worker scheduling. Overhead per step = the mean time of
saga_step_run minus the mean time of the same inventory HTTP call made alone (same pool).
Prints orders/s, the ratio saga/plain (target >= 0.5x) and the overhead in ms, queries per step
(counted apart from the timed rounds), the payment's time, the ratio a free orchestrator would
reach, and order creation with INVENTORY_SERVICE set, unset and without the saga start. The
harness's own lookups (the saga id, the final status check) and the bare HTTP call are not timed.

Figures: see docs/sagas.md ("Round trips and commits per saga"). It now also prints the
statements per phase and one round trip's cost. Per saga, statements went 42 -> 31 and commits
waiting for the WAL flush 6 -> 3. Measured e2e rates were dominated by machine load (8-17 on 2
cores): median ratio 0.12x -> 0.19x over three alternating runs each, within the noise. 0.5x is
not reached. On a quiet machine (load < 1), 2026-12-07, --orders 200 --rounds 3: plain 344.7/s,
saga 54.7/s, ratio 0.16x; with a free orchestrator 0.31x (docs/sagas.md).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _database() -> None:
    import psycopg

    url = os.environ.get("BENCH_DATABASE_URL", "postgres://postgres@127.0.0.1:5432/gh_sagas_bench")
    os.environ["DATABASE_URL"] = url
    base, _, name = url.rpartition("/")
    with psycopg.connect(f"{base}/postgres", autocommit=True) as conn:
        if not conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [name]).fetchone():
            conn.execute(f'CREATE DATABASE "{name}"')


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--orders", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    _database()
    os.environ.setdefault("REDIS_URL", os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/10"))
    os.environ.setdefault("CELERY_BROKER_URL", "memory://")
    os.environ["DJANGO_SETTINGS_MODULE"] = "config.settings.test"
    import django

    django.setup()
    import logging

    logging.disable(logging.WARNING)
    import builtins

    _print = builtins.print
    builtins.print = lambda *a, **k: (
        None if a and str(a[0]).startswith('{"logger": "demo-') else _print(*a, **k)
    )
    from django.conf import settings
    from django.core.management import call_command

    call_command("migrate", verbosity=0)

    import importlib.util
    import threading
    from contextlib import nullcontext
    from http.server import ThreadingHTTPServer
    from unittest import mock

    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    from gateway.models import Service, ServiceTarget
    from sagas.placement import inventory_call
    from sagas.services import saga_step_run
    from tests.sagas.conftest import pay, place_order, saga_of

    spec = importlib.util.spec_from_file_location("demo_inventory", ROOT / "demo" / "inventory.py")
    demo = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(demo)
    http = ThreadingHTTPServer(("127.0.0.1", 0), demo.make_handler(demo.Inventory(stock=10**9)))
    http.daemon_threads = True
    threading.Thread(target=http.serve_forever, daemon=True).start()
    server = type("S", (), {"url": f"http://127.0.0.1:{http.server_address[1]}", "close": http.shutdown})()
    service, _ = Service.objects.get_or_create(name="bench-inventory")
    ServiceTarget.objects.filter(service=service).delete()
    ServiceTarget.objects.create(service=service, url=server.url)
    settings.INVENTORY_SERVICE = "bench-inventory"

    step_times: list[float] = []
    raw_times: list[float] = []
    pay_times: list[float] = []

    def plain(n: int) -> float:
        started = time.perf_counter()
        for _ in range(n):
            place_order()
        return n / (time.perf_counter() - started)

    def saga(n: int, queries: list[int] | None = None) -> float:
        elapsed = 0.0
        for index in range(n):
            started = time.perf_counter()
            order = place_order()
            elapsed += time.perf_counter() - started
            saga_id = str(saga_of(order).id)  # a worker has it in its message: not timed
            started = time.perf_counter()
            for name in ("reserve_inventory", "confirm_inventory"):
                if name == "confirm_inventory":
                    t = time.perf_counter()
                    pay(order, event_id=f"bench-{saga_id}")
                    pay_times.append(time.perf_counter() - t)
                with CaptureQueriesContext(connection) if queries is not None else nullcontext() as captured:
                    t = time.perf_counter()
                    result = saga_step_run(saga_id=saga_id, name=name, kind="action")
                    step_times.append(time.perf_counter() - t)
                assert result.outcome == "succeeded", result
                if queries is not None:
                    queries.append(len(captured.captured_queries))
            elapsed += time.perf_counter() - started
            assert saga_of(order).status == "completed"  # the check is not timed either
            # the same HTTP call alone, for the overhead figure (not counted in the saga rate)
            t = time.perf_counter()
            inventory_call(
                method="POST",
                path=f"/reservations/{saga_id}/confirm",
                idempotency_key=f"raw-{index}-{saga_id}",
            )
            raw_times.append(time.perf_counter() - t)
        return n / elapsed

    def unconfigured(n: int) -> float:
        settings.INVENTORY_SERVICE = ""
        try:
            return plain(n)
        finally:
            settings.INVENTORY_SERVICE = "bench-inventory"

    def without_saga(n: int) -> float:
        with mock.patch("sagas.placement.placement_start"):
            return plain(n)

    def round_trips() -> dict[str, int]:
        """Statements sent to PostgreSQL (BEGIN and COMMIT included) by each phase of one saga."""
        counts = {}
        with CaptureQueriesContext(connection) as captured:
            order = place_order()
        counts["create"] = len(captured.captured_queries)
        saga_id = str(saga_of(order).id)
        with CaptureQueriesContext(connection) as captured:
            saga_step_run(saga_id=saga_id, name="reserve_inventory", kind="action")
        counts["reserve"] = len(captured.captured_queries)
        with CaptureQueriesContext(connection) as captured:
            pay(order, event_id=f"bench-rt-{saga_id}")
        counts["payment"] = len(captured.captured_queries)
        with CaptureQueriesContext(connection) as captured:
            saga_step_run(saga_id=saga_id, name="confirm_inventory", kind="action")
        counts["confirm"] = len(captured.captured_queries)
        assert saga_of(order).status == "completed"
        return counts

    def round_trip_ms(n: int = 300) -> float:
        with connection.cursor() as cursor:
            started = time.perf_counter()
            for _ in range(n):
                cursor.execute("SELECT 1")
                cursor.fetchone()
        return (time.perf_counter() - started) / n * 1000

    plain(20), saga(20), unconfigured(20), without_saga(20)  # warm up pools, caches, plans
    step_queries: list[int] = []
    saga(10, step_queries)  # queries per step, counted apart from the timed rounds
    with CaptureQueriesContext(connection) as created:
        place_order()
    phases = round_trips()
    with mock.patch("sagas.placement.placement_start"), CaptureQueriesContext(connection) as bare_created:
        place_order()
    step_times.clear(), raw_times.clear(), pay_times.clear()
    rates: dict[str, list[float]] = {"plain": [], "saga": [], "unset": [], "bare": []}
    for _ in range(args.rounds):
        rates["plain"].append(plain(args.orders))
        rates["saga"].append(saga(args.orders))
        rates["unset"].append(unconfigured(args.orders))
        rates["bare"].append(without_saga(args.orders))
    rtt = statistics.median(round_trip_ms() for _ in range(3))
    server.close()
    plain_rate, saga_rate = statistics.median(rates["plain"]), statistics.median(rates["saga"])
    overhead = (statistics.mean(step_times) - statistics.mean(raw_times)) * 1000
    print(
        f"plain order creation   {plain_rate:8.1f} orders/s  (median of {args.rounds} rounds x {args.orders})"
    )
    print(f"placement saga e2e     {saga_rate:8.1f} sagas/s   (created, reserved, paid, confirmed)")
    print(f"ratio saga/plain       {saga_rate / plain_rate:8.2f}x   (target >= 0.5x)")
    print(
        f"step (HTTP + orchestrator) {statistics.mean(step_times) * 1000:6.2f} ms, HTTP call alone "
        f"{statistics.mean(raw_times) * 1000:6.2f} ms -> orchestrator overhead {overhead:6.2f} ms per step"
    )
    # What the saga side must do besides the orchestrator: create, the payment, two HTTP calls.
    floor = 1 / plain_rate + statistics.mean(pay_times) + 2 * statistics.mean(raw_times)
    print(
        f"payment handling {statistics.mean(pay_times) * 1000:6.2f} ms; ratio with a free orchestrator "
        f"(create + payment + 2 HTTP calls) {1 / floor / plain_rate:5.2f}x"
    )
    print(
        f"queries per step run   {statistics.mean(step_queries):8.1f}      (HTTP's target lookup included); "
        f"order_create {len(created.captured_queries)} queries"
    )
    total = sum(phases.values())
    print(
        "round trips per saga   "
        + ", ".join(f"{name} {count}" for name, count in phases.items())
        + f" = {total} (plain creation {phases['create']}, without the saga start "
        f"{len(bare_created.captured_queries)}); one round trip (SELECT 1) {rtt:.3f} ms -> "
        f"{total * rtt:.1f} ms of the saga's {1000 / saga_rate:.1f} ms in round trips alone"
    )
    print(
        f"order creation: INVENTORY_SERVICE set {plain_rate:.1f}/s, unset "
        f"{statistics.median(rates['unset']):.1f}/s, without the saga start "
        f"{statistics.median(rates['bare']):.1f}/s"
    )


if __name__ == "__main__":
    main()
