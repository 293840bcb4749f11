"""Order creation (auth + Idempotency-Key + order, items, outbox event) vs a plain insert, ONE run.

    .venv/bin/python benchmarks/orders.py [--requests 300] [--rounds 4] [--clients 8]
                                          [--servers asgi,gunicorn]

Starts the project under its production server (tests.support.servers.server_command: uvicorn,
`python -m config.server`) and, with `--servers asgi,gunicorn`, the gthread gunicorn baseline
(config/gunicorn.py) beside it, with this module as their settings and URLconf, which adds
baseline endpoints:

    POST /bench/plain-order  the plain order insert: same Bearer auth, input validation and
                             response as /api/orders, the order and its items in one
                             transaction; no Idempotency-Key, no outbox event (the target's
                             baseline: what idempotency and the outbox cost)
    POST /bench/plain        no authentication, one raw INSERT of the body into a benchmark-only
                             table (a floor: the cheapest DRF endpoint that writes)
    POST /bench/plain-auth   the same, behind the Bearer token auth
    POST /api/orders         the real endpoint, a fresh Idempotency-Key per request
    POST /bench/orders-no-idempotency   the same view and service without the Idempotency-Key
                             decorator (not a contender: it splits the cost)

Contenders run interleaved in rounds (so drift on this shared machine hits all alike), each with
--clients keep-alive connections in threads. Prints requests/s and latency per contender and the
ratios orders/plain-order (target >= 0.6x) and orders/plain. Environment: BENCH_DATABASE_URL (default
postgres://postgres@127.0.0.1:5432/gh_orders_bench, created and migrated), BENCH_REDIS_URL
(default redis://127.0.0.1:6379/10). A local JWKS server signs the tokens.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

if __name__ != "__main__":
    # Imported by the server process as DJANGO_SETTINGS_MODULE and ROOT_URLCONF.
    from config.settings.production import *  # noqa: F401,F403

    ROOT_URLCONF = "benchmarks.orders"
    LOGGING["root"]["level"] = "WARNING"  # noqa: F405  (a log line per request would measure the logger)

    def __getattr__(name: str):  # noqa: ANN202  (PEP 562: the URLconf is built once apps are ready)
        if name == "urlpatterns":
            return _urlpatterns()
        if name in ("handler404", "handler500"):
            from config import urls

            return getattr(urls, name)
        raise AttributeError(name)

    def _urlpatterns() -> list:
        import json
        import uuid

        from django.db import connection
        from django.urls import include, path
        from django.utils import timezone
        from rest_framework.permissions import AllowAny
        from rest_framework.request import Request
        from rest_framework.response import Response
        from rest_framework.views import APIView

        from config.urls import urlpatterns as project_urlpatterns

        class PlainInsertApi(APIView):
            authentication_classes: list = []
            permission_classes = [AllowAny]

            def post(self, request: Request) -> Response:
                row_id = uuid.uuid4()
                with connection.cursor() as cursor:
                    cursor.execute(
                        "INSERT INTO bench_plain_insert (id, body, created_at) VALUES (%s, %s, %s)",
                        [row_id, json.dumps(request.data), timezone.now()],
                    )
                return Response({"id": str(row_id)}, status=201, headers={"Location": f"/bench/{row_id}"})

        class PlainInsertAuthApi(PlainInsertApi):
            authentication_classes = APIView.authentication_classes
            permission_classes = APIView.permission_classes

        from datetime import timedelta
        from decimal import Decimal

        from django.conf import settings
        from django.db import transaction

        from orders.apis import OrderCreateApi
        from orders.models import Order, OrderItem, OrderStatus

        class OrderCreateWithoutIdempotencyApi(OrderCreateApi):
            """The real view and service minus the Idempotency-Key decorator: splits the cost."""

            post = OrderCreateApi.post.__wrapped__

        class PlainOrderInsertApi(OrderCreateApi):
            """The plain way to insert an order: same auth, validation and response, the order and
            its items in one transaction — no Idempotency-Key, no outbox event."""

            def post(self, request: Request) -> Response:
                serializer = self.InputSerializer(data=request.data)
                serializer.is_valid(raise_exception=True)
                data = serializer.validated_data
                now = timezone.now()
                with transaction.atomic():
                    order = Order.objects.create(
                        user_id=f"plain:{request.user.user_id}",  # kept apart from the check below
                        tenant_id=request.user.tenant_id or "",
                        store_id=data["store_id"],
                        currency=data["currency"],
                        delivery_address=data["delivery_address"],
                        contact_phone=data["contact_phone"],
                        total_amount=sum(
                            (item["unit_price"] * item["quantity"] for item in data["items"]), Decimal("0")
                        ),
                        status=OrderStatus.PENDING_PAYMENT,
                        expiration_time=now + timedelta(minutes=settings.ORDER_SESSION_DURATION_MINUTES),
                        created_at=now,
                    )
                    items = OrderItem.objects.bulk_create(
                        [OrderItem(order=order, **item) for item in data["items"]]
                    )
                order._prefetched_objects_cache = {"items": items}
                return Response(
                    self.OutputSerializer(order).data,
                    status=201,
                    headers={"Location": f"/api/orders/{order.id}"},
                )

        return [
            path("bench/orders-no-idempotency", OrderCreateWithoutIdempotencyApi.as_view()),
            path("bench/plain", PlainInsertApi.as_view()),
            path("bench/plain-auth", PlainInsertAuthApi.as_view()),
            path("bench/plain-order", PlainOrderInsertApi.as_view()),
            path("", include(project_urlpatterns)),
        ]

else:
    # `python benchmarks/orders.py`: the project root, not benchmarks/, resolves `orders`.
    sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]
    sys.path.insert(0, str(ROOT))


def main() -> None:
    import argparse
    import http.client
    import json
    import statistics
    import subprocess
    import threading
    import time
    import types
    import uuid

    import psycopg

    from tests.support.servers import HttpServer, free_port, server_command
    from tests.support.tokens import TokenService

    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=300, help="requests per contender per round")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--clients", type=int, default=8, help="concurrent keep-alive connections")
    parser.add_argument(
        "--servers",
        default=os.environ.get("BENCH_SERVER", "asgi"),
        help="comma-separated: asgi (production), gunicorn, django-asgi; e.g. asgi,gunicorn",
    )
    args = parser.parse_args()

    database_url = os.environ.get("BENCH_DATABASE_URL", "postgres://postgres@127.0.0.1:5432/gh_orders_bench")
    redis_url = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/10")
    name = database_url.rsplit("/", 1)[1]
    with psycopg.connect(database_url.rsplit("/", 1)[0] + "/postgres", autocommit=True) as conn:
        if not conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [name]).fetchone():
            conn.execute(f'CREATE DATABASE "{name}"')

    import redis

    redis.Redis.from_url(redis_url).flushdb()  # a fresh JWKS and idempotency cache for this run
    tokens = TokenService(HttpServer(lambda request: None), types.SimpleNamespace())
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "benchmarks.orders",
        "PYTHONPATH": str(ROOT),
        "SECRET_KEY": "benchmark-only-secret-key-0123456789abcdef",
        "DATABASE_URL": database_url,
        "DATABASE_POOL_MAX": "20",
        "REDIS_URL": redis_url,
        # The outbox's on-commit relay nudge goes to a broker as in production (Redis, no worker).
        "CELERY_BROKER_URL": redis_url,
        "PAYMENT_WEBHOOK_SECRET": "bench",
        "LOG_LEVEL": "WARNING",
        **tokens.env,
    }
    subprocess.run(
        [sys.executable, "manage.py", "migrate", "-v0"],
        cwd=ROOT,
        env={**env, "DJANGO_SETTINGS_MODULE": "config.settings.test"},
        check=True,
    )
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(
            "CREATE TABLE IF NOT EXISTS bench_plain_insert"
            " (id uuid PRIMARY KEY, body jsonb, created_at timestamptz)"
        )
        conn.execute(
            "TRUNCATE bench_plain_insert, orders_order, orders_order_item, outbox_event,"
            " idempotency_record CASCADE"
        )

    # --servers: asgi (production, default), gunicorn (the gthread baseline it replaced),
    # django-asgi (Django's own ASGIHandler: sync views on one thread per process). Several
    # servers run side by side (one at a time under load) so their ratio comes from ONE run.
    kinds = [k for k in args.servers.split(",") if k]

    def command(kind: str, port: int) -> list[str]:
        return {
            "asgi": server_command(port),
            "gunicorn": [
                sys.executable,
                "-m",
                "gunicorn",
                "config.wsgi:application",
                "--config",
                str(ROOT / "config" / "gunicorn.py"),
                "--bind",
                f"127.0.0.1:{port}",
            ],
            "django-asgi": [*server_command(port), "--app", "benchmarks.asgi_native:application"],
        }[kind]

    ports = {kind: free_port() for kind in kinds}
    servers = [subprocess.Popen(command(kind, ports[kind]), cwd=ROOT, env=env) for kind in kinds]
    try:
        for kind, server in zip(kinds, servers, strict=True):
            deadline = time.monotonic() + 30
            while True:
                try:
                    probe = http.client.HTTPConnection("127.0.0.1", ports[kind], timeout=1)
                    probe.request("GET", "/healthz")
                    if probe.getresponse().status == 200:
                        break
                except OSError:
                    pass
                if time.monotonic() > deadline or server.poll() is not None:
                    raise SystemExit(f"server {kind} did not start")
                time.sleep(0.2)

        token = tokens.token(sub="bench-user", tenant_id="bench-tenant", expires_in=3600)
        order_body = json.dumps(
            {
                "store_id": str(uuid.uuid4()),
                "currency": "USD",
                "delivery_address": "1 Bench Street",
                "contact_phone": "+14155550100",
                "items": [
                    {"sku": "SKU-1", "name": "Widget", "quantity": 2, "unit_price": "10.00"},
                    {"sku": "SKU-2", "name": "Gadget", "quantity": 1, "unit_price": "4.50"},
                ],
            }
        ).encode()
        bearer = {"Authorization": f"Bearer {token}"}
        per_server = {
            "plain": ("/bench/plain", {}, False),
            "plain-auth": ("/bench/plain-auth", bearer, False),
            "plain-order": ("/bench/plain-order", bearer, False),
            "orders": ("/api/orders", bearer, True),
            "orders-nokey": ("/bench/orders-no-idempotency", bearer, False),
        }
        # name → (port, path, headers, idempotent); names are "contender" for one server,
        # "server:contender" for several.
        contenders = {
            (name if len(kinds) == 1 else f"{kind}:{name}"): (ports[kind], *spec)
            for kind in kinds
            for name, spec in per_server.items()
        }

        def run(
            port: int, path: str, headers: dict[str, str], idempotent: bool, count: int
        ) -> tuple[float, list[float]]:
            latencies: list[float] = []
            lock = threading.Lock()
            per_client = [
                count // args.clients + (1 if i < count % args.clients else 0) for i in range(args.clients)
            ]
            errors: list[str] = []

            def client(n: int) -> None:
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
                mine = []
                for _ in range(n):
                    request_headers = {"Content-Type": "application/json", **headers}
                    if idempotent:
                        request_headers["Idempotency-Key"] = uuid.uuid4().hex
                    started = time.perf_counter()
                    conn.request("POST", path, body=order_body, headers=request_headers)
                    response = conn.getresponse()
                    body = response.read()
                    mine.append(time.perf_counter() - started)
                    if response.status != 201:
                        errors.append(f"{path}: {response.status} {body[:200]!r}")
                conn.close()
                with lock:
                    latencies.extend(mine)

            threads = [threading.Thread(target=client, args=(n,)) for n in per_client]
            started = time.perf_counter()
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            elapsed = time.perf_counter() - started
            if errors:
                raise SystemExit(f"{len(errors)} failed requests, e.g. {errors[0]}")
            return elapsed, latencies

        for port, path, headers, idempotent in contenders.values():  # warm-up: pools, JWKS, caches
            run(port, path, headers, idempotent, args.clients * 5)
        totals = {name: [0.0, 0, []] for name in contenders}
        for round_number in range(args.rounds):
            order = list(contenders) if round_number % 2 == 0 else list(reversed(contenders))
            for name in order:
                elapsed, latencies = run(*contenders[name], args.requests)
                totals[name][0] += elapsed
                totals[name][1] += len(latencies)
                totals[name][2].extend(latencies)
                print(
                    f"  round {round_number + 1} {name:<24} {len(latencies) / elapsed:8.0f} req/s", flush=True
                )

        with psycopg.connect(database_url) as conn:
            orders, events = conn.execute(
                "SELECT (SELECT count(*) FROM orders_order WHERE user_id NOT LIKE 'plain:%%'), "
                "(SELECT count(*) FROM outbox_event WHERE type = 'order.created')"
            ).fetchone()
        rates = {}
        print(f"\n{args.rounds} rounds × {args.requests} requests, {args.clients} clients, servers {kinds}")
        print(f"{'contender':<25}{'req/s':>9}{'median ms':>11}{'p95 ms':>9}")
        for name, (elapsed, count, latencies) in totals.items():
            rates[name] = count / elapsed
            latencies.sort()
            print(
                f"{name:<25}{rates[name]:>9.0f}{statistics.median(latencies) * 1000:>11.1f}"
                f"{latencies[int(len(latencies) * 0.95)] * 1000:>9.1f}"
            )
        for kind in kinds:
            k = "" if len(kinds) == 1 else f"{kind}:"
            print(
                f"{kind}: orders / plain-order = {rates[k + 'orders'] / rates[k + 'plain-order']:.2f}x"
                " (target >= 0.6x: what the Idempotency-Key and the outbox event cost over a plain"
                f" order insert); orders / plain = {rates[k + 'orders'] / rates[k + 'plain']:.2f}x;"
                f" orders-nokey / plain = {rates[k + 'orders-nokey'] / rates[k + 'plain']:.2f}x"
            )
        if "asgi" in kinds and "gunicorn" in kinds:
            print(
                f"POST /api/orders, production server / gunicorn gthread ="
                f" {rates['asgi:orders'] / rates['gunicorn:orders']:.2f}x (target >= 0.9x, same run)"
            )
        print(f"check: {orders} orders, {events} order.created events (one per order: {orders == events})")
    finally:
        for server in servers:
            server.terminate()
        for server in servers:
            server.wait(timeout=20)
        tokens.server.close()


if __name__ == "__main__":
    main()
