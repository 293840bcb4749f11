"""Expire 1 000 000 overdue orders with the real sweep; seconds, peak RSS, one event per order.

    .venv/bin/python benchmarks/expiry.py [--orders 1000000] [--batch-size 5000] [--sweeps 1]

Runs against a dedicated benchmark database (BENCH_DATABASE_URL, default
postgres://postgres@127.0.0.1:5432/gh_orders_bench), created and migrated if missing and emptied
first: never point it at a database you care about. Targets: ≤ 60 s, memory flat.
"""

from __future__ import annotations

import argparse
import os
import sys
import threading
import time
from pathlib import Path
from urllib.parse import urlsplit

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
BENCH_URL = os.environ.get("BENCH_DATABASE_URL", "postgres://postgres@127.0.0.1:5432/gh_orders_bench")
os.environ["DATABASE_URL"] = BENCH_URL
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings.test")
os.environ.setdefault("REDIS_URL", "redis://127.0.0.1:6379/10")


def rss_mib() -> float:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def ensure_database() -> None:
    import psycopg

    parts = urlsplit(BENCH_URL)
    name = parts.path.lstrip("/")
    admin = BENCH_URL.rsplit("/", 1)[0] + "/postgres"
    with psycopg.connect(admin, autocommit=True) as conn:
        if not conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [name]).fetchone():
            conn.execute(f'CREATE DATABASE "{name}"')


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--orders", type=int, default=1_000_000)
    parser.add_argument("--batch-size", type=int, default=5000)
    parser.add_argument("--sweeps", type=int, default=1, help="concurrent sweeps (threads)")
    args = parser.parse_args()

    ensure_database()
    import django

    django.setup()
    from django.core.management import call_command
    from django.db import connection
    from django.utils import timezone

    from orders import expiry

    call_command("migrate", verbosity=0)
    with connection.cursor() as cursor:
        cursor.execute("TRUNCATE orders_order, orders_order_item, processed_events, outbox_event CASCADE")
        started = time.monotonic()
        # generate_series: a million rows without a million round trips. Expiration times grow
        # with insertion order, as they do for real orders (created_at + session), so the sweep
        # walks the table roughly in physical order; ids are time-ordered like orders.models.uuid7.
        cursor.execute(
            """
            INSERT INTO orders_order (id, user_id, tenant_id, store_id, total_amount, currency,
                                      delivery_address, contact_phone, status, expiration_time,
                                      payment_reference, created_at, updated_at)
            SELECT encode(set_bit(set_bit(overlay(uuid_send(gen_random_uuid()) placing
                       substring(int8send((extract(epoch from now()) * 1000)::bigint - 7200000 + n) from 3)
                       from 1 for 6), 52, 1), 53, 1), 'hex')::uuid,
                   'user-' || (n %% 5000), 'tenant-' || (n %% 7), gen_random_uuid(),
                   ((n %% 10000) / 100.0)::numeric(12, 2), 'USD', 'bench street ' || n, '+14155550100',
                   'pending_payment', now() - interval '1 hour' + n * (interval '1 hour' / %s),
                   '', now() - interval '2 hours', now() - interval '2 hours'
            FROM generate_series(1, %s) AS n
            """,
            [args.orders + 1, args.orders],
        )
        cursor.execute("VACUUM ANALYZE orders_order")
        print(f"inserted {args.orders} overdue orders in {time.monotonic() - started:.1f} s")

    now = timezone.now()
    rss_start = rss_mib()
    rss_samples: list[float] = []
    lock = threading.Lock()

    def progress(batch: int, total: int) -> None:
        with lock:
            rss_samples.append(rss_mib())
            if len(rss_samples) % 40 == 0:
                print(
                    f"  … {total} expired by one sweep at {time.monotonic() - started:.1f} s,"
                    f" RSS {rss_samples[-1]:.0f} MiB",
                    flush=True,
                )

    results: list[int] = []

    def sweep() -> None:
        try:
            results.append(expiry.order_expire_due(now=now, batch_size=args.batch_size, progress=progress))
        finally:
            connection.close()

    started = time.monotonic()
    threads = [threading.Thread(target=sweep) for _ in range(args.sweeps)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.monotonic() - started

    with connection.cursor() as cursor:
        cursor.execute("SELECT status, count(*) FROM orders_order GROUP BY status")
        statuses = dict(cursor.fetchall())
        cursor.execute(
            """
            SELECT count(*), count(DISTINCT aggregateid) FROM outbox_event WHERE type = 'order.expired'
            """
        )
        events, distinct_orders = cursor.fetchone()
        cursor.execute(
            """
            SELECT count(*) FROM orders_order o
            WHERE NOT EXISTS (SELECT 1 FROM outbox_event e
                              WHERE e.type = 'order.expired' AND e.aggregateid = o.id::text)
            """
        )
        (missing,) = cursor.fetchone()

    expired = sum(results)
    peak = max(rss_samples or [rss_start])
    print(f"sweeps: {args.sweeps}, batch size {args.batch_size}")
    print(f"expired {expired} orders in {elapsed:.1f} s ({expired / elapsed:,.0f} orders/s); target ≤ 60 s")
    print(
        f"RSS: start {rss_start:.0f} MiB, after first batch {rss_samples[0] if rss_samples else 0:.0f} MiB, "
        f"peak {peak:.0f} MiB, end {rss_samples[-1] if rss_samples else 0:.0f} MiB"
    )
    print(f"statuses: {statuses}")
    print(f"order.expired events: {events} for {distinct_orders} distinct orders; without one: {missing}")
    ok = (
        expired == args.orders
        and statuses == {"expired": args.orders}
        and events == distinct_orders == args.orders
        and missing == 0
    )
    print("CHECK:", "every order expired once with exactly one order.expired event" if ok else "FAILED")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
