"""A real Celery worker and beat (filesystem broker) write JSON lines only: Celery's own lines
(start-up, task received/succeeded, beat ticks) go through settings.LOGGING, task lines carry the
task name and id, and an idle relay tick is DEBUG while a tick that relayed an event is INFO."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from outbox.models import OutboxEvent
from tests.outbox.factories import OutboxEventFactory

ROOT = Path(__file__).resolve().parents[2]
CELERY = str(Path(sys.executable).with_name("celery"))


def _env(var_dir: Path) -> dict[str, str]:
    from django.db import connection

    db = connection.settings_dict
    return {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "config.settings.local",
        "DATABASE_URL": f"postgres://{db['USER']}@{db['HOST']}:{db['PORT']}/{db['NAME']}",
        "GATEHOUSE_VAR_DIR": str(var_dir),
        "CELERY_BROKER_URL": "filesystem://",
        "OUTBOX_PUBLISHER": "log",
        "OUTBOX_RELAY_INTERVAL_SECONDS": "1",
        "LOG_LEVEL": "INFO",
        "PYTHONPATH": str(ROOT),
    }


def _lines(path: Path) -> list[str]:
    return [line for line in path.read_text(errors="replace").splitlines() if line.strip()]


@pytest.mark.django_db(transaction=True)
def test_worker_and_beat_write_only_json_lines(tmp_path):
    event = OutboxEventFactory()
    env = _env(tmp_path / "var")
    logs = {name: tmp_path / f"{name}.log" for name in ("worker", "beat")}
    commands = {
        "worker": [CELERY, "-A", "config", "--quiet", "worker", "--loglevel", "INFO", "--concurrency", "1"],
        "beat": [CELERY, "-A", "config", "--quiet", "beat", "--loglevel", "INFO"],
    }
    processes = {}
    for name, command in commands.items():
        with logs[name].open("w") as out:
            processes[name] = subprocess.Popen(
                command, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT
            )
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            event.refresh_from_db()
            if event.status == OutboxEvent.Status.PUBLISHED:
                break
            exited = {n: p.returncode for n, p in processes.items() if p.poll() is not None}
            assert not exited, (exited, {n: _lines(p)[-5:] for n, p in logs.items()})
            time.sleep(0.5)
        assert event.status == OutboxEvent.Status.PUBLISHED
        time.sleep(3)  # a few idle relay ticks after the one that worked
    finally:
        for process in processes.values():
            process.terminate()
        for process in processes.values():
            process.wait(timeout=30)

    parsed = {}
    for name, path in logs.items():
        lines = _lines(path)
        assert lines, f"{name} wrote nothing"
        for line in lines:
            try:
                json.loads(line)
            except ValueError:
                pytest.fail(f"{name} wrote a line that is not JSON: {line!r}")
        parsed[name] = [json.loads(line) for line in lines]
        assert all("Traceback" not in line for line in lines)

    worker = parsed["worker"]
    relayed = [r for r in worker if str(r.get("message", "")).startswith("outbox event ")]
    assert relayed and relayed[0]["task_name"] == "outbox.tasks.outbox_relay"
    assert relayed[0]["task_id"] and relayed[0]["correlation_id"]
    succeeded = [r for r in worker if "succeeded" in str(r.get("message", ""))]
    # the tick that relayed the event says so at INFO; the idle ticks (returned 0) are DEBUG, not shown
    assert len(succeeded) == 1 and succeeded[0]["level"] == "INFO" and succeeded[0]["message"].endswith(": 1")
    assert not [r for r in worker if "received" in str(r.get("message", ""))]
    assert not [r for r in parsed["beat"] if "Sending due task" in str(r.get("message", ""))]
