"""Tests: the real PostgreSQL and Redis of this machine (see tests/conftest.py)."""

import os

os.environ.setdefault("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/gatehouse")
os.environ.setdefault("REDIS_URL", "redis://127.0.0.1:6379/1")
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
