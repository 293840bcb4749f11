"""Saga steps are spans in the trace of the work that started the saga (docs/telemetry.md)."""

from __future__ import annotations

import pytest

from common import telemetry
from sagas.models import SagaStatus
from tests.sagas.conftest import drive, pay, place_order, saga_of
from tests.support.otlp import running_collector

pytestmark = pytest.mark.django_db


@pytest.fixture
def telemetry_on(monkeypatch):
    with running_collector() as collector:
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", collector.url)
        monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", "50")
        assert telemetry.init()
        yield collector
        telemetry.shutdown()


def test_each_step_is_a_span_under_the_order_that_started_the_saga(inventory, telemetry_on):
    order = place_order()
    saga = saga_of(order)
    drive()
    pay(order)
    drive()

    (created,) = telemetry_on.wait_for("order.create")
    assert saga.traceparent == f"00-{created.trace_id}-{created.span_id}-01"
    saga.refresh_from_db()
    assert saga.status == SagaStatus.COMPLETED
    steps = {span.attributes["saga.step"]: span for span in telemetry_on.wait_for("saga.step", 2)}
    assert set(steps) == {"reserve_inventory", "confirm_inventory"}  # await_payment is a wait
    for span in steps.values():
        assert (span.trace_id, span.parent_span_id) == (created.trace_id, created.span_id)
        assert span.attributes["saga.id"] == str(saga.id)
        assert span.attributes["saga.outcome"] == "succeeded" and not span.error


def test_a_step_that_will_be_retried_is_an_error_span(inventory, telemetry_on):
    inventory.modes["reserve"] = "fail"
    saga = saga_of(place_order())
    drive(rounds=1)

    (span,) = telemetry_on.wait_for("saga.step")
    assert span.attributes["saga.outcome"] in ("retry", "failed") and span.error
    assert span.attributes["saga.attempt"] == 1
    assert span.attributes["saga.id"] == str(saga.id)
