"""Tests: the real PostgreSQL and Redis of this machine (see tests/conftest.py)."""

import os

os.environ.setdefault("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/gatehouse")
os.environ.setdefault("REDIS_URL", "redis://127.0.0.1:6379/1")


def _redis_url_for_this_worker() -> None:
    """Each xdist worker gets its own Redis database, so flushing one never touches another.

    Done here, before the settings below read REDIS_URL; the marker keeps server subprocesses
    started by a test (which inherit this environment) on the same database as their test.
    """
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")
    if not worker or os.environ.get("GATEHOUSE_REDIS_DB_FOR_WORKER") == worker:
        return
    prefix, _, db = os.environ["REDIS_URL"].rpartition("/")
    index = int(worker.removeprefix("gw") or 0)
    os.environ["REDIS_URL"] = f"{prefix}/{(int(db) if db.isdigit() else 1) + index}"
    os.environ["GATEHOUSE_REDIS_DB_FOR_WORKER"] = worker


_redis_url_for_this_worker()
os.environ.setdefault("CELERY_BROKER_URL", "memory://")
os.environ.setdefault("DATABASE_POOL", "false")

from config.settings.base import *  # noqa: E402,F401,F403

DEBUG = False
SECRET_KEY = "test-secret-key"
PAYMENT_WEBHOOK_SECRET = "test-payment-secret"
OUTBOX_WEBHOOK_SECRET = "test-outbox-secret"
PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
CELERY_TASK_ALWAYS_EAGER = False
LOGGING["root"]["level"] = "WARNING"  # noqa: F405
