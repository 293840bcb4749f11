"""Sagas with real Celery workers on the real broker (RabbitMQ vhost of CELERY_BROKER_URL when
it is AMQP), and races between the payment handler and the expiry sweep on PostgreSQL."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from datetime import timedelta

import pytest
from django.db import connection, connections
from django.utils import timezone

from orders.expiry import order_expire_due
from orders.models import OrderStatus
from outbox.models import OutboxEvent
from sagas.models import SagaStatus, SagaStep
from sagas.services import saga_deadline_handle
from tests.sagas.conftest import INVENTORY, drive, pay, place_order, saga_of, steps_of
from tests.support.servers import ROOT

BROKER = os.environ.get("SAGAS_TEST_BROKER_URL") or os.environ.get("CELERY_BROKER_URL", "")


def wait_for(condition, *, timeout: float = 30.0, what: str = "") -> None:
    limit = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > limit:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


@pytest.fixture
def worker_factory(tmp_path):
    processes: list[subprocess.Popen] = []
    db = connection.settings_dict

    def start(name: str) -> subprocess.Popen:
        env = {
            **os.environ,
            "DJANGO_SETTINGS_MODULE": "config.settings.test",
            "DATABASE_URL": f"postgres://{db['USER']}@{db['HOST']}:{db['PORT']}/{db['NAME']}",
            "CELERY_BROKER_URL": BROKER,
            "INVENTORY_SERVICE": INVENTORY,
            "SAGA_STEP_LEASE_SECONDS": "2",
            "SAGA_BACKOFF_BASE_SECONDS": "0.05",
            "SAGA_SWEEP_INTERVAL_SECONDS": "1",
            "GATEHOUSE_VAR_DIR": str(tmp_path / name),
            "PYTHONPATH": str(ROOT),
        }
        os.makedirs(tmp_path / name, exist_ok=True)
        command = [sys.executable, "-m", "celery", "-A", "config", "worker", "-B", "--pool", "solo"]
        command += ["--loglevel", "WARNING", "-n", f"{name}@%h", "--without-mingle", "--without-gossip"]
        # A session of its own: kill -9 reaches the worker and its embedded beat together.
        process = subprocess.Popen(command, cwd=ROOT, env=env, start_new_session=True)
        processes.append(process)
        return process

    yield start
    for process in processes:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
    for process in processes:
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)


@pytest.mark.django_db(transaction=True)
@pytest.mark.skipif(
    not BROKER.startswith("amqp"), reason="needs the real broker (CELERY_BROKER_URL=amqp://…)"
)
def test_a_worker_killed_mid_reservation_reserves_once(inventory, worker_factory):
    # given an inventory service that acts on the first reservation but answers it late
    inventory.modes["reserve"] = "hang"
    inventory.hang_once = True
    inventory.hang_seconds = 20.0
    order = place_order()
    saga = saga_of(order)
    first = worker_factory("first")
    wait_for(lambda: inventory.requests["reserve", str(saga.id)] == 1, what="the first reservation request")
    # when the worker is killed in the middle of the step
    os.killpg(first.pid, signal.SIGKILL)
    first.wait(timeout=10)
    step = steps_of(saga)["reserve_inventory", "action"]
    assert step.status == "running" and step.attempts == 1
    # then another worker's sweep finds the expired lease and runs the step again, same key
    worker_factory("second")
    wait_for(
        lambda: steps_of(saga)["reserve_inventory", "action"].status == "succeeded", what="the retried step"
    )
    assert inventory.requests["reserve", str(saga.id)] == 2
    assert inventory.effects["reserve", str(saga.id)] == 1
    keys = [h["key"] for h in inventory.headers if h["operation"] == "reserve"]
    assert keys == [f"{saga.id}:reserve"] * 2
    step = steps_of(saga)["reserve_inventory", "action"]
    assert step.attempts == 2
    # and the payment completes it through the worker
    pay(order)
    wait_for(lambda: saga_of(order).status == SagaStatus.COMPLETED, what="the saga to complete")
    assert inventory.reserved[str(saga.id)] == "confirmed"


@pytest.mark.django_db(transaction=True)
def test_a_payment_racing_the_expiry_sweep_has_one_outcome_and_one_release(inventory):
    # given reserved orders already past their expiration time
    orders = [place_order(now=timezone.now() - timedelta(minutes=20)) for _ in range(4)]
    drive()
    for order in orders:
        assert inventory.reserved[str(saga_of(order).id)] == "held"
    barrier = threading.Barrier(2)
    results = {}

    def sweep() -> None:
        try:
            barrier.wait()
            results["swept"] = order_expire_due()
        finally:
            connections.close_all()

    def payments() -> None:
        try:
            barrier.wait()
            results["paid"] = [pay(order, event_id=f"race-{order.id}").outcome for order in orders]
        finally:
            connections.close_all()

    threads = [threading.Thread(target=sweep), threading.Thread(target=payments)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    drive()
    # then every order expired once, each payment asks for a refund, each reservation is released once
    assert results["paid"] == ["payment_after_expiry"] * 4
    for order in orders:
        order.refresh_from_db()
        saga = saga_of(order)
        assert order.status == OrderStatus.EXPIRED
        assert OutboxEvent.objects.filter(aggregateid=str(order.id), type="order.expired").count() == 1
        assert (
            OutboxEvent.objects.filter(aggregateid=str(order.id), type="order.payment_after_expiry").count()
            == 1
        )
        assert saga.status == SagaStatus.COMPENSATED
        assert SagaStep.objects.filter(saga=saga, kind="compensation").count() == 1
        assert inventory.requests["release", str(saga.id)] == 1
        assert inventory.requests["confirm", str(saga.id)] == 0


@pytest.mark.django_db(transaction=True)
def test_a_saga_past_its_deadline_whose_order_expired_is_compensated_by_the_sweep(inventory):
    # given a saga awaiting payment whose order expired without the hook (e.g. before upgrade)
    order = place_order()
    drive()
    saga = saga_of(order)
    from orders.models import Order

    Order.objects.filter(pk=order.pk).update(status=OrderStatus.EXPIRED)
    later = order.expiration_time + timedelta(seconds=1)
    # when the saga sweep reaches it
    assert saga_deadline_handle(saga_id=saga.id, now=later) == "compensated"
    drive(now=later + timedelta(seconds=1))
    saga.refresh_from_db()
    assert saga.status == SagaStatus.COMPENSATED and saga.reason == "deadline"
    assert inventory.requests["release", str(saga.id)] == 1
    assert order_expire_due(now=later) == 0
