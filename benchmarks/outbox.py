"""Outbox relay throughput to RabbitMQ with publisher confirms: one relay, then two, in one run.

    .venv/bin/python benchmarks/outbox.py [--events 50000] [--aggregates 1000] [--batch-size 500]

Inserts N pending events spread over the aggregates (interleaved, as many writers produce
them), relays them all with the real relay (claim + lease, pipelined confirms, bulk mark) to a
durable topic exchange with a durable queue bound (so every confirm covers a persisted
message), and prints events/s. Then the same with two relay processes at once, and the ratio.
Target: >= 5 000 events/s for one relay.

Runs against a dedicated benchmark database (BENCH_DATABASE_URL, default
postgres://postgres@127.0.0.1:5432/gh_outbox_bench), created and migrated if missing and emptied
first: never point it at a database you care about. RabbitMQ: BENCH_AMQP_URL (default guest on
127.0.0.1:5672); the exchange and queue are created for the run and deleted afterwards.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import random
import sys
import time
import uuid
from pathlib import Path
from urllib.parse import urlsplit

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
BENCH_URL = os.environ.get("BENCH_DATABASE_URL", "postgres://postgres@127.0.0.1:5432/gh_outbox_bench")
AMQP_URL = os.environ.get("BENCH_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672//")
os.environ["DATABASE_URL"] = BENCH_URL
os.environ["DATABASE_POOL"] = "false"
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings.test")
os.environ.setdefault("REDIS_URL", "redis://127.0.0.1:6379/12")


def ensure_database() -> None:
    import psycopg

    name = urlsplit(BENCH_URL).path.lstrip("/")
    admin = BENCH_URL.rsplit("/", 1)[0] + "/postgres"
    with psycopg.connect(admin, autocommit=True) as conn:
        if not conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [name]).fetchone():
            conn.execute(f'CREATE DATABASE "{name}"')


def insert_events(count: int, aggregates: int) -> None:
    from django.db import connection

    from outbox.services import outbox_publish_many

    with connection.cursor() as cursor:
        cursor.execute("TRUNCATE outbox_event")
    owners = [index % aggregates for index in range(count)]
    random.Random(1).shuffle(owners)
    from django.db import transaction

    with transaction.atomic():
        outbox_publish_many(
            events=(
                {
                    "aggregatetype": "order",
                    "aggregateid": f"order-{owner}",
                    "type": "order.updated",
                    "payload": {"order_id": f"order-{owner}", "status": "paid", "total": "42.50"},
                }
                for owner in owners
            ),
            batch_size=5000,
        )
    with connection.cursor() as cursor:
        cursor.execute("VACUUM ANALYZE outbox_event")


def relay_until_empty(exchange: str, batch_size: int, results) -> None:  # type: ignore[no-untyped-def]
    """One relay process: relay until nothing is pending any more."""
    from django.db import connection

    from outbox.models import OutboxEvent
    from outbox.publishers import BrokerPublisher
    from outbox.relay import outbox_relay_drain

    publisher = BrokerPublisher(AMQP_URL, exchange)
    published = failed = 0
    cpu_start = time.process_time()
    while True:  # drain returns when nothing is claimable: the other relay may hold the rest
        result = outbox_relay_drain(publisher=publisher, batch_size=batch_size)
        published += result.published
        failed += result.failed
        if not result.batches:
            if not OutboxEvent.objects.filter(status="pending").exists():
                break
            time.sleep(0.005)  # everything claimable is leased by the other relay
    cpu = time.process_time() - cpu_start
    publisher.close()
    connection.close()
    results.put((published, failed, cpu))


def run(relays: int, exchange: str, batch_size: int, events: int) -> tuple[float, list]:  # type: ignore[type-arg]
    from django.db import connections

    from outbox.models import OutboxEvent

    connections.close_all()  # forked relays must not share the parent's connection
    context = multiprocessing.get_context("fork")
    results = context.Queue()
    processes = [
        context.Process(target=relay_until_empty, args=(exchange, batch_size, results)) for _ in range(relays)
    ]
    started = time.perf_counter()
    for process in processes:
        process.start()
    outcomes = [results.get() for _ in processes]
    elapsed = time.perf_counter() - started
    for process in processes:
        process.join()
    published = OutboxEvent.objects.filter(status="published").count()
    if published != events or any(failed for _, failed, _ in outcomes):
        raise SystemExit(f"relay incomplete: {published}/{events} published, outcomes {outcomes}")
    return elapsed, outcomes


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=50_000)
    parser.add_argument("--aggregates", type=int, default=1_000)
    parser.add_argument("--batch-size", type=int, default=500)
    args = parser.parse_args()

    ensure_database()
    import django

    django.setup()
    import amqp
    from django.core.management import call_command

    call_command("migrate", verbosity=0)
    name = f"bench-outbox-{uuid.uuid4().hex[:8]}"
    broker = amqp.Connection(urlsplit(AMQP_URL).netloc.split("@")[-1], userid="guest", password="guest")
    broker.connect()
    channel = broker.channel()
    channel.exchange_declare(name, "topic", durable=True, auto_delete=False)
    channel.queue_declare(name, durable=True, auto_delete=False)
    channel.queue_bind(name, name, routing_key="#")
    print(
        f"outbox relay -> RabbitMQ (publisher confirms, persistent, durable queue): "
        f"{args.events} events over {args.aggregates} aggregates, batch {args.batch_size}; "
        f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} (other work shares them)"
    )
    rates = {}
    try:
        for relays in (1, 2):
            insert_events(args.events, args.aggregates)
            elapsed, outcomes = run(relays, name, args.batch_size, args.events)
            rates[relays] = args.events / elapsed
            shares = ", ".join(str(published) for published, _, _ in outcomes)
            cpu = sum(seconds for _, _, seconds in outcomes)
            print(
                f"  {relays} relay{'s' if relays > 1 else ' '}: {elapsed:6.2f} s  "
                f"{rates[relays]:8.0f} events/s  (published per relay: {shares}; relay CPU "
                f"{cpu:.1f} s = {args.events / cpu:.0f} events per relay-CPU-second)"
            )
            channel.queue_purge(name)
    finally:
        channel.queue_delete(name)
        channel.exchange_delete(name)
        broker.close()
    print(f"  two relays / one relay: {rates[2] / rates[1]:.2f}x")
    print(f"  target >= 5000 events/s for one relay: {'met' if rates[1] >= 5000 else 'NOT met'}")


if __name__ == "__main__":
    main()
