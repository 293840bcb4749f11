"""Single-beat guard: of two beats, only the lock holder schedules; a dead holder is replaced."""

from __future__ import annotations

import importlib
from datetime import timedelta

import pytest
from celery import signals
from django.conf import settings

from config.celery import FileBeatLock, GuardedScheduler, RedisBeatLock
from config.celery import app as celery_app


@pytest.fixture
def redis_url() -> str:
    return settings.REDIS_URL  # the per-test, flushed Redis database


def test_two_redis_guards_one_wins_and_a_lapsed_leader_is_replaced(redis_url):
    first = RedisBeatLock(redis_url, "test:beat-lock", ttl_seconds=30)
    second = RedisBeatLock(redis_url, "test:beat-lock", ttl_seconds=30)

    assert first.acquire() is True
    assert second.acquire() is False
    assert first.acquire() is True  # renewal by the holder
    assert 0 < first.client.pttl("test:beat-lock") <= 30_000

    # the leader dies without releasing: its lease lapses (shortened to 1 ms, not waited 30 s)
    first.client.pexpire("test:beat-lock", 1)
    for _ in range(1000):
        if not first.client.exists("test:beat-lock"):
            break
    assert second.acquire() is True
    assert first.acquire() is False  # the old leader, come back, does not take it back

    second.release()
    assert first.acquire() is True


def test_unreachable_redis_means_not_leader():
    lock = RedisBeatLock("redis://127.0.0.1:1/0", "test:beat-lock", ttl_seconds=30)
    assert lock.acquire() is False


def test_two_file_guards_one_wins_until_released(tmp_path):
    path = str(tmp_path / "beat.lock")
    first, second = FileBeatLock(path), FileBeatLock(path)

    assert first.acquire() is True
    assert second.acquire() is False
    first.release()
    assert second.acquire() is True
    second.release()


def test_only_the_leading_beat_sends_due_tasks(redis_url):
    sent: list[str] = []

    def record(sender=None, **_):  # type: ignore[no-untyped-def]
        sent.append(sender)

    schedule = {
        "relay": {
            "task": "outbox.tasks.outbox_relay",
            "schedule": timedelta(seconds=1),
            "options": {"expires": 1},
        }
    }
    beats = [
        GuardedScheduler(
            app=celery_app,
            lock=RedisBeatLock(redis_url, "test:beat-lock", ttl_seconds=30),
            lazy=True,
        )
        for _ in range(2)
    ]
    signals.before_task_publish.connect(record, weak=False)
    try:
        for beat in beats:
            beat.setup_schedule = lambda: None  # type: ignore[method-assign]
            beat.merge_inplace(schedule)
            for entry in beat.schedule.values():
                entry.last_run_at = entry.default_now() - timedelta(seconds=5)  # due
        for _ in range(3):
            for beat in beats:
                beat.tick()
    finally:
        signals.before_task_publish.disconnect(record)
        for beat in beats:
            beat.lock.release()

    assert [beat.is_leader for beat in beats] == [True, False]
    assert sent == ["outbox.tasks.outbox_relay"]


def test_every_beat_entry_names_a_registered_task_and_expires_before_its_next_tick():
    celery_app.loader.import_default_modules()  # what a worker does at start: autodiscovery

    for name, entry in settings.CELERY_BEAT_SCHEDULE.items():
        assert entry["task"] in celery_app.tasks, name
        interval = entry["schedule"].total_seconds()
        assert 0 < entry["options"]["expires"] < interval, name


def test_beat_entries_expire_before_their_next_tick_whatever_the_configured_interval(monkeypatch):
    # An interval shorter than a fixed `expires` would let a stale tick pile up behind the next.
    import config.settings.celery as celery_settings

    monkeypatch.setenv("ORDER_EXPIRY_INTERVAL_SECONDS", "20")
    monkeypatch.setenv("OUTBOX_RELAY_INTERVAL_SECONDS", "2")
    try:
        schedule = importlib.reload(celery_settings).CELERY_BEAT_SCHEDULE
    finally:
        monkeypatch.undo()
        importlib.reload(celery_settings)

    assert schedule["orders-expire-due"]["schedule"] == timedelta(seconds=20)
    assert schedule["outbox-relay"]["schedule"] == timedelta(seconds=2)
    for name, entry in schedule.items():
        assert 0 < entry["options"]["expires"] < entry["schedule"].total_seconds(), name


# --- the lock in PostgreSQL: Redis is not needed ------------------------------------------------


def _pg_lock(key: int):
    from django.db import connection

    from config.celery import PostgresAdvisoryBeatLock, _postgres_connect_kwargs

    return PostgresAdvisoryBeatLock(_postgres_connect_kwargs(connection.settings_dict), key)


@pytest.mark.django_db(transaction=True)
def test_with_redis_unreachable_one_beat_schedules_and_the_second_stays_idle(settings):
    from tests.support.servers import free_port

    dead_redis = f"redis://127.0.0.1:{free_port()}/0"
    settings.REDIS_URL = dead_redis
    settings.BEAT_LOCK_REDIS_URL = ""
    settings.BEAT_LOCK_ADVISORY_KEY = 424242
    from config.celery import PostgresAdvisoryBeatLock, beat_lock_from_settings

    assert isinstance(beat_lock_from_settings(), PostgresAdvisoryBeatLock)
    sent: list[str] = []

    def record(sender=None, **_):  # type: ignore[no-untyped-def]
        sent.append(sender)

    schedule = {
        "relay": {
            "task": "outbox.tasks.outbox_relay",
            "schedule": timedelta(seconds=1),
            "options": {"expires": 1},
        }
    }
    beats = [GuardedScheduler(app=celery_app, lock=beat_lock_from_settings(), lazy=True) for _ in range(2)]
    signals.before_task_publish.connect(record, weak=False)
    try:
        for beat in beats:
            beat.setup_schedule = lambda: None  # type: ignore[method-assign]
            beat.merge_inplace(schedule)
            for entry in beat.schedule.values():
                entry.last_run_at = entry.default_now() - timedelta(seconds=5)
        for _ in range(3):
            for beat in beats:
                beat.tick()
        assert [beat.is_leader for beat in beats] == [True, False]
        assert sent == ["outbox.tasks.outbox_relay"]
        # the leader dies (its connection closes): the second takes over on its next tick
        beats[0].lock._conn.close()
        beats[0].lock._conn = None
        assert beats[1].lock.acquire() is True
    finally:
        signals.before_task_publish.disconnect(record)
        for beat in beats:
            beat.lock.release()


@pytest.mark.django_db(transaction=True)
def test_advisory_lock_is_exclusive_and_released():
    first, second = _pg_lock(515151), _pg_lock(515151)
    try:
        assert first.acquire() is True
        assert first.acquire() is True  # renewing a held lock
        assert second.acquire() is False
        first.release()
        assert second.acquire() is True
    finally:
        first.release()
        second.release()
