"""The embedded broker (config/broker.py): `filesystem://` loses no message and never hands a
worker a partial file, with writers and takers in separate processes as in production, and a
real worker outlives a file it cannot decode."""

from __future__ import annotations

import json
import logging
import multiprocessing
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from kombu import Connection

from config.broker import REJECTED, Transport
from config.celery import app as celery_app
from outbox.models import OutboxEvent
from tests.common.test_celery_logging import ROOT, _env
from tests.outbox.factories import OutboxEventFactory

QUEUE = "celery"
FORK = multiprocessing.get_context("fork")


def _connection(folder) -> Connection:
    folder = str(folder)
    return Connection(
        "filesystem://",
        transport_options={
            "data_folder_in": folder,
            "data_folder_out": folder,
            "processed_folder": folder,
            "control_folder": f"{folder}/control",
        },
    )


def _publish(channel, ident: str, size: int = 0) -> None:
    """As kombu publishes: properties and a delivery tag, then `_put` on the queue."""
    body = json.dumps({"id": ident, "pad": "x" * size})
    channel.basic_publish(channel.prepare_message(body), exchange="", routing_key=QUEUE)


def _id(message) -> str:
    return json.loads(message.body)["id"]


def _write(folder, writer: int, count: int, size: int) -> None:
    with _connection(folder) as conn:
        channel = conn.default_channel
        for n in range(count):
            _publish(channel, f"{writer}-{n}", size)


def _take(folder, expected: int, results) -> None:
    """Takes and acks messages until the writers are done and the folder is empty; an error is
    a result too (a decode error is what a worker dies of)."""
    taken = []
    try:
        with _connection(folder) as conn:
            channel = conn.default_channel
            while len(taken) < expected:
                try:
                    message = channel.basic_get(QUEUE)
                except Exception as exc:
                    results.put(("error", repr(exc)))
                    return
                if message is None:
                    if _done(folder) and not _queued(folder):
                        break
                    continue
                taken.append(_id(message))
                message.ack()
    finally:
        results.put(("taken", taken))


def _files(folder) -> list[str]:
    """Every message, part or table file anywhere under the broker folder (lock files aside)."""
    return sorted(p.name for p in Path(folder).rglob("*") if p.is_file() and p.suffix != ".lock")


def _queued(folder) -> bool:
    return any(name.endswith(f".{QUEUE}.msg") for name in os.listdir(folder))


def _done(folder) -> bool:
    return os.path.exists(os.path.join(folder, "writers-done"))


def test_filesystem_urls_get_the_atomic_transport(tmp_path):
    with _connection(tmp_path) as conn:
        assert isinstance(conn.transport, Transport)


def test_takers_racing_writers_get_every_message_once_and_whole(tmp_path):
    writers, per_writer, size = 2, 300, 256 * 1024  # big files: a long window between create and write
    expected = writers * per_writer
    results = FORK.Queue()
    takers = [FORK.Process(target=_take, args=(tmp_path, expected, results)) for _ in range(2)]
    for taker in takers:
        taker.start()
    producers = [FORK.Process(target=_write, args=(tmp_path, w, per_writer, size)) for w in range(writers)]
    for producer in producers:
        producer.start()
    for producer in producers:
        producer.join(60)
        assert producer.exitcode == 0
    (tmp_path / "writers-done").touch()

    outcomes = [results.get(timeout=60) for _ in takers]
    for taker in takers:
        taker.join(30)
    errors = [detail for kind, detail in outcomes if kind == "error"]
    assert not errors, errors[:3]
    taken = [message for kind, detail in outcomes if kind == "taken" for message in detail]
    assert sorted(taken) == sorted(f"{w}-{n}" for w in range(writers) for n in range(per_writer))
    # every message acked: nothing left in the queue, in a taken folder or half-staged
    assert [name for name in _files(tmp_path) if name != "writers-done"] == []


def test_an_undecodable_file_is_set_aside_and_logged_and_the_next_message_delivered(tmp_path, caplog):
    (tmp_path / f"00000000000000000000_bad.{QUEUE}.msg").write_bytes(b'{"half": ')
    with _connection(tmp_path) as conn:
        channel = conn.default_channel
        _publish(channel, "good")
        with caplog.at_level(logging.ERROR, logger="gatehouse.broker"):
            assert _id(channel.basic_get(QUEUE)) == "good"
    assert (tmp_path / REJECTED / f"00000000000000000000_bad.{QUEUE}.msg").read_bytes() == b'{"half": '
    assert "00000000000000000000_bad" in caplog.text


def _take_and_die(folder, ready) -> None:
    """A consumer that takes a message and is killed before it acks (os._exit: no cleanup)."""
    with _connection(folder) as conn:
        message = conn.default_channel.basic_get(QUEUE)
        ready.send(_id(message))  # a pipe: sent before the exit, unlike a Queue's feeder thread
        os._exit(0)


def test_a_message_taken_by_a_consumer_killed_before_its_ack_is_delivered_again(tmp_path, caplog):
    with _connection(tmp_path) as conn:
        _publish(conn.default_channel, "m1")
    ready, child_end = FORK.Pipe(duplex=False)
    dead = FORK.Process(target=_take_and_die, args=(tmp_path, child_end))
    dead.start()
    assert ready.poll(30) and ready.recv() == "m1"
    dead.join(30)
    assert not _queued(tmp_path)  # it is in the dead consumer's folder, not in the queue

    with _connection(tmp_path) as conn, caplog.at_level(logging.WARNING, logger="gatehouse.broker"):
        channel = conn.default_channel
        again = channel.basic_get(QUEUE)  # the first take sweeps: the dead folder is given back
        assert again is not None and _id(again) == "m1"
        again.ack()
    assert "put back" in caplog.text
    assert _files(tmp_path) == []


def test_a_live_consumers_unacked_message_is_not_taken_by_another(tmp_path):
    with _connection(tmp_path) as first, _connection(tmp_path) as second:
        _publish(first.default_channel, "m1")
        held = first.default_channel.basic_get(QUEUE)
        assert _id(held) == "m1"
        assert second.default_channel.basic_get(QUEUE) is None  # swept, but its owner is alive
        held.ack()
        assert _files(tmp_path) == []


def test_an_ack_removes_the_file_a_requeue_and_a_close_put_it_back(tmp_path):
    with _connection(tmp_path) as conn:
        channel = conn.default_channel
        _publish(channel, "m1")
        channel.basic_get(QUEUE).reject(requeue=True)
        assert _queued(tmp_path) and len(_files(tmp_path)) == 1  # back in the queue, once
        again = channel.basic_get(QUEUE)
        assert _id(again) == "m1"
    # closed with the message unacked: kombu restores it, and the taken file goes
    assert _queued(tmp_path) and len(_files(tmp_path)) == 1
    with _connection(tmp_path) as conn:
        last = conn.default_channel.basic_get(QUEUE)
        assert _id(last) == "m1"
        last.ack()
    assert _files(tmp_path) == []


def test_a_queue_read_without_acks_keeps_no_file(tmp_path):
    with _connection(tmp_path) as conn:
        channel = conn.default_channel
        _publish(channel, "m1")
        assert _id(channel.basic_get(QUEUE, no_ack=True)) == "m1"
        assert _files(tmp_path) == []


def _bind(folder, queue: str, rounds: int, start) -> None:
    start.wait(30)
    with _connection(folder) as conn:
        channel = conn.default_channel
        for n in range(rounds):  # a new exchange each round: every table is created in a race
            channel._queue_bind(f"jobs{n}", queue, None, queue)


def test_bindings_racing_to_create_an_exchange_table_are_all_kept(tmp_path):
    rounds, queues = 200, ["q0", "q1", "q2"]
    start = FORK.Barrier(len(queues))
    binders = [FORK.Process(target=_bind, args=(tmp_path, q, rounds, start)) for q in queues]
    for binder in binders:
        binder.start()
    for binder in binders:
        binder.join(60)
    assert [binder.exitcode for binder in binders] == [0] * len(queues)
    for n in range(rounds):
        table = json.loads((tmp_path / "control" / f"jobs{n}.exchange").read_text())
        assert sorted(entry[2] for entry in table) == queues, n


@pytest.mark.parametrize("stage", ["put", "bind"])
def test_a_failed_write_leaves_no_partial_file(tmp_path, monkeypatch, stage):
    real_replace = os.replace

    def failing_replace(src, dst):
        if str(src).endswith(".part"):
            raise OSError("disk full")
        return real_replace(src, dst)

    monkeypatch.setattr(os, "replace", failing_replace)
    with _connection(tmp_path) as conn:
        channel = conn.default_channel
        with pytest.raises(Exception, match="Cannot"):
            if stage == "put":
                channel._put(QUEUE, {"id": "x"})
            else:
                channel._queue_bind("jobs", "k", None, "q")
    # nothing half-written anywhere: no message, no table, no staged part (a lock file may stay)
    assert [p.name for p in tmp_path.rglob("*") if p.is_file() and p.suffix != ".lock"] == []


@pytest.mark.django_db(transaction=True)
def test_a_real_worker_survives_an_empty_message_file_and_goes_on_working(tmp_path):
    # kombu's transport: "Unrecoverable error: JSONDecodeError" and the worker process exits
    event = OutboxEventFactory()
    env = _env(tmp_path / "var")
    broker = tmp_path / "var" / "broker"
    broker.mkdir(parents=True)
    (broker / f"0_empty.{QUEUE}.msg").write_bytes(b"")  # what a reader saw mid-write before
    log = tmp_path / "worker.log"
    command = [str(Path(sys.executable).with_name("celery")), "-A", "config", "--quiet", "worker"]
    with log.open("w") as out:
        worker = subprocess.Popen(
            [*command, "--loglevel", "INFO", "--concurrency", "1"],
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        with _connection(broker) as conn:
            celery_app.send_task("outbox.tasks.outbox_relay", producer=conn.Producer())
        deadline = time.monotonic() + 60
        while event.status != OutboxEvent.Status.PUBLISHED and time.monotonic() < deadline:
            assert worker.poll() is None, log.read_text()[-2000:]
            time.sleep(0.3)
            event.refresh_from_db()
        assert event.status == OutboxEvent.Status.PUBLISHED
        assert worker.poll() is None
    finally:
        worker.terminate()
        worker.wait(timeout=30)
    assert (broker / REJECTED / f"0_empty.{QUEUE}.msg").exists()
    assert "0_empty" in log.read_text()
