"""Celery: chosen for at-least-once delivery with idempotent tasks (see README, "Celery:
at-least-once delivery", and docs/celery-and-outbox.md)."""

import os
from datetime import timedelta

from config.env import BASE_DIR, env

_var = env.path("GATEHOUSE_VAR_DIR", default=str(BASE_DIR / "var"))
_broker_dir = f"{_var}/broker"

# Embedded default: kombu's filesystem transport needs no server and is shared by the web
# server, worker and beat on one machine. Production sets Redis or RabbitMQ.
CELERY_BROKER_URL = env("CELERY_BROKER_URL", default="filesystem://")
if CELERY_BROKER_URL.startswith("filesystem"):
    # kombu's filesystem transport fails on a missing folder; any process may enqueue first.
    os.makedirs(_broker_dir, exist_ok=True)
CELERY_BROKER_TRANSPORT_OPTIONS = (
    {
        "data_folder_in": _broker_dir,
        "data_folder_out": _broker_dir,
        "processed_folder": _broker_dir,
        # Exchange tables; kombu's default is a folder named "control" in the working directory.
        "control_folder": f"{_broker_dir}/control",
    }
    if CELERY_BROKER_URL.startswith("filesystem")
    # Redis: an unacked (acks_late) message is redelivered after visibility_timeout; it must
    # exceed the hard time limit so a task still running is never handed to a second worker.
    # AMQP: confirm_publish makes apply_async wait for the broker's ack.
    # max_retries/interval_*: how long kombu retries to open a connection for publishing; a
    # commit-time nudge against a dead broker gives up at once (the beat covers it), and
    # apply_async's own retry policy still rides out blips for tasks that need it.
    else {
        "visibility_timeout": 600,
        "confirm_publish": True,
        "max_retries": 1,
        "interval_start": 0,
        "interval_step": 0.2,
    }
)
# A nudge or a beat tick against a dead broker fails within seconds instead of hanging.
CELERY_BROKER_CONNECTION_TIMEOUT = env.float("CELERY_BROKER_CONNECTION_TIMEOUT", default=2.0)
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
CELERY_TASK_ACKS_LATE = True  # a worker killed mid-task leaves the message to be redelivered
CELERY_TASK_REJECT_ON_WORKER_LOST = True
# Lost broker connection: cancel running acks_late tasks (they are redelivered and idempotent).
CELERY_WORKER_CANCEL_LONG_RUNNING_TASKS_ON_CONNECTION_LOSS = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
# Logs: settings.LOGGING (JSON lines) applies in the worker and beat too (config.celery's
# setup_logging handler); Celery must not replace the root logger's handlers with its text ones.
CELERY_WORKER_HIJACK_ROOT_LOGGER = False
CELERY_TASK_SERIALIZER = "json"
CELERY_ACCEPT_CONTENT = ["json"]
CELERY_RESULT_BACKEND = None
CELERY_TASK_IGNORE_RESULT = True
CELERY_TIMEZONE = "UTC"
CELERY_TASK_TIME_LIMIT = 300
CELERY_TASK_SOFT_TIME_LIMIT = 240
CELERY_BEAT_SCHEDULE_FILENAME = f"{_var}/celerybeat-schedule"
# Single-beat guard (config.celery.GuardedScheduler): only the beat holding the lock schedules.
CELERY_BEAT_SCHEDULER = "config.celery:GuardedScheduler"
CELERY_BEAT_MAX_LOOP_INTERVAL = 5  # ticks (and lock renewals) at least this often
# The single-beat lock: a PostgreSQL advisory lock (or a flock on SQLite), never REDIS_URL, so a
# Redis outage does not stop the schedule. BEAT_LOCK_REDIS_URL, only when set, uses a Redis lease.
BEAT_LOCK_REDIS_URL = env("BEAT_LOCK_REDIS_URL", default="")
BEAT_LOCK_ADVISORY_KEY = env.int("BEAT_LOCK_ADVISORY_KEY", default=0x6761746562656174 % (2**63))
BEAT_LOCK_KEY = env("BEAT_LOCK_KEY", default="gatehouse:celery-beat-lock")
BEAT_LOCK_TTL_SECONDS = env.float("BEAT_LOCK_TTL_SECONDS", default=30.0)
BEAT_LOCK_FILE = f"{_var}/celerybeat.lock"


def _beat_entry(task: str, interval: timedelta) -> dict[str, object]:
    """A beat entry whose queued tick expires at 80 % of its interval, however the interval is
    configured: a tick still waiting when the next one is due is useless (the tasks are
    idempotent and the next tick does the same work), so a backlog of stale ticks never piles up
    while workers are down."""
    return {"task": task, "schedule": interval, "options": {"expires": interval.total_seconds() * 0.8}}


CELERY_BEAT_SCHEDULE = {
    "orders-expire-due": _beat_entry(
        "orders.tasks.orders_expire_due",
        timedelta(seconds=env.int("ORDER_EXPIRY_INTERVAL_SECONDS", default=30)),
    ),
    "outbox-relay": _beat_entry(
        "outbox.tasks.outbox_relay",
        timedelta(seconds=env.int("OUTBOX_RELAY_INTERVAL_SECONDS", default=5)),
    ),
    "outbox-purge-published": _beat_entry("outbox.tasks.outbox_purge_published", timedelta(hours=1)),
    "idempotency-purge-expired": _beat_entry(
        "idempotency.tasks.idempotency_purge_expired", timedelta(minutes=10)
    ),
    "gateway-purge-revoked-tokens": _beat_entry("gateway.tasks.revoked_tokens_purge", timedelta(hours=1)),
    "sagas-sweep": _beat_entry(
        "sagas.sweep", timedelta(seconds=env.int("SAGA_SWEEP_INTERVAL_SECONDS", default=5))
    ),
    "orders-purge-processed-events": _beat_entry("orders.tasks.processed_events_purge", timedelta(hours=6)),
}
