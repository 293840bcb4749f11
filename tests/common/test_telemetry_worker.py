"""A real Celery worker (RabbitMQ) exporting its task spans to a real collector: the SDK started
in the pool process after the fork (prefork) or in the worker itself (solo), the enqueuer's
traceparent continued."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid

import pytest

from outbox.services import RELAY_TASK_NAME
from tests.support.otlp import running_collector
from tests.support.servers import ROOT

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def otlp_collector():
    with running_collector() as collector:
        yield collector


BROKER_URL = os.environ.get("CELERY_TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672//")


def _broker_reachable() -> bool:
    import kombu

    try:
        with kombu.Connection(BROKER_URL, connect_timeout=2) as connection:
            connection.ensure_connection(max_retries=1)
        return True
    except Exception:
        return False


@pytest.mark.parametrize("pool", ["prefork", "solo"])
def test_a_worker_exports_a_span_per_task_in_the_enqueuers_trace(pool, otlp_collector):
    if not _broker_reachable():
        if os.environ.get("CI"):  # CI starts RabbitMQ (scripts/services): a skip would hide this
            pytest.fail(f"no AMQP broker at {BROKER_URL}")
        pytest.skip(f"no AMQP broker at {BROKER_URL}")
    from django.db import connection

    from config.celery import app as celery_app

    queue = f"telemetry-{uuid.uuid4().hex[:8]}"
    db = connection.settings_dict
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "config.settings.test",
        "DATABASE_URL": f"postgres://{db['USER']}@{db['HOST']}:{db['PORT']}/{db['NAME']}",
        "CELERY_BROKER_URL": BROKER_URL,
        "PYTHONPATH": str(ROOT),
        "OTEL_EXPORTER_OTLP_ENDPOINT": otlp_collector.url,
        "OTEL_BSP_SCHEDULE_DELAY": "50",
        "OTEL_SERVICE_NAME": "gatehouse-worker",
    }
    worker = subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "config", "worker", "--pool", pool,
         "--concurrency", "1", "-Q", queue, "--loglevel", "WARNING", "--without-heartbeat",
         "--without-gossip", "--without-mingle", "--hostname", f"{queue}@%h"],
        cwd=ROOT,
        env=env,
    )  # fmt: skip
    parent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    try:
        with celery_app.connection_for_write(BROKER_URL) as broker:
            celery_app.send_task(
                RELAY_TASK_NAME, connection=broker, queue=queue, headers={"traceparent": parent}
            )

        (span,) = otlp_collector.wait_for(f"celery.task {RELAY_TASK_NAME}", seconds=60)
    finally:
        worker.terminate()
        worker.wait(timeout=30)

    assert (span.trace_id, span.parent_span_id) == ("4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7")
    assert span.kind == "consumer" and span.service_name == "gatehouse-worker"
    assert span.attributes["celery.state"] == "SUCCESS"
