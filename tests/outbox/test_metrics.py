"""Counters incremented outside the web server (the relay in a Celery worker or `drain_outbox`)
reach /metrics through the Prometheus multiprocess directory the processes share."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest
import requests
from django.db import connection, transaction

from common.metrics import render_metrics
from outbox.services import outbox_publish
from tests.outbox.conftest import ROOT
from tests.support.servers import free_port, wait_healthy

pytestmark = pytest.mark.django_db(transaction=True)

PUBLISHED = re.compile(r"^outbox_events_published_total (\S+)$", re.MULTILINE)


def published(exposition: str) -> float:
    match = PUBLISHED.search(exposition)
    return float(match.group(1)) if match else 0.0


@pytest.fixture
def serve_process():
    """Start `scripts/serve` (the Procfile's web process) on a free port; stopped at teardown."""
    processes: list[subprocess.Popen] = []

    def start(env: dict[str, str]) -> str:
        port = free_port()
        db = connection.settings_dict
        process = subprocess.Popen(
            ["bash", "scripts/serve"],
            cwd=ROOT,
            env={
                **os.environ,
                "DJANGO_SETTINGS_MODULE": "config.settings.test",
                "DATABASE_URL": f"postgres://{db['USER']}@{db['HOST']}:{db['PORT']}/{db['NAME']}",
                "PYTHONPATH": str(ROOT),
                "PYTHON": sys.executable,
                "BIND": f"127.0.0.1:{port}",
                "WEB_WORKERS": "1",
                "WEB_THREADS": "2",
                **env,
            },
        )
        processes.append(process)
        return wait_healthy(process, f"http://127.0.0.1:{port}")

    yield start
    for process in processes:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


def test_events_published_by_a_relay_process_are_counted_on_the_web_servers_metrics(
    relay_process, serve_process, tmp_path, monkeypatch
):
    # given: three committed events, and one multiprocess directory shared by every process
    # (what scripts/run exports to the Procfile's web, worker, beat and consumers)
    with transaction.atomic():
        for n in range(3):
            outbox_publish(aggregatetype="order", aggregateid="m-1", type="order.created", payload={"n": n})
    shared = {"PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}

    # when: a relay in its own process publishes them, as the Celery worker does
    relay = relay_process(env={**shared, "OUTBOX_PUBLISHER": "log"})
    out, err = relay.communicate(timeout=60)
    assert relay.returncode == 0, err
    assert "3 published" in out

    # then: the multiprocess view of that directory counts them …
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
    assert published(render_metrics()[0].decode()) == 3
    monkeypatch.delenv("PROMETHEUS_MULTIPROC_DIR")

    # … and so does /metrics of the web process started afterwards on the same directory, which
    # must not wipe what the others already counted
    web = serve_process(shared)
    assert published(requests.get(f"{web}/metrics", timeout=10).text) == 3
