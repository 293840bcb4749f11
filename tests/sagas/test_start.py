"""saga_start writes the saga, its steps and `saga.started` in one statement on PostgreSQL: the
rows and the event are what the ORM path (and `_event`) would write."""

from __future__ import annotations

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from common.correlation import reset_correlation_id, set_correlation_id
from outbox.models import OutboxEvent
from sagas.models import SagaInstance, SagaStatus, SagaStep, StepKind, StepStatus
from sagas.services import _event_payload
from tests.sagas.conftest import place_order, saga_of

pytestmark = pytest.mark.django_db


def test_start_writes_the_saga_its_steps_and_its_event_in_one_statement(inventory):
    token = set_correlation_id("corr-start")
    try:
        with CaptureQueriesContext(connection) as captured:
            order = place_order()
    finally:
        reset_correlation_id(token)
    saga = saga_of(order)
    # the saga row
    assert saga.status == SagaStatus.RUNNING and saga.saga_type == "order.placement"
    assert saga.reference == str(order.id) and saga.correlation_id == "corr-start"
    assert saga.current_step == "reserve_inventory" and saga.finished_at is None
    assert saga.context["reservation_id"] == str(saga.id)
    assert saga.context["items"] == [{"sku": "SKU-1", "quantity": 2}]
    # its steps, in definition order, the first already scheduled
    steps = list(SagaStep.objects.filter(saga=saga).order_by("position"))
    assert [(s.name, s.kind, s.position, s.status, s.attempts) for s in steps] == [
        ("reserve_inventory", StepKind.ACTION, 0, StepStatus.PENDING, 0),
        ("await_payment", StepKind.ACTION, 1, StepStatus.PENDING, 0),
        ("confirm_inventory", StepKind.ACTION, 2, StepStatus.PENDING, 0),
    ]
    assert steps[0].not_before == saga.created_at
    assert steps[1].not_before is None and steps[2].not_before is None
    # its event, with the payload `_event` builds for every other saga event
    [started] = OutboxEvent.objects.filter(aggregatetype="saga", aggregateid=str(saga.id))
    assert started.type == "saga.started"
    assert started.payload == _event_payload(saga)
    assert started.headers == {"correlation_id": "corr-start"}
    # one statement for the three writes
    saga_writes = [q["sql"] for q in captured.captured_queries if "sagas_instance" in q["sql"]]
    assert len(saga_writes) == 1
    assert "sagas_step" in saga_writes[0] and "outbox_event" in saga_writes[0]
    assert SagaInstance.objects.count() == 1


def test_the_finishing_update_and_its_event_are_one_statement_with_the_same_payload(inventory):
    from tests.sagas.conftest import drive, pay

    order = place_order()
    drive()
    pay(order)
    saga = saga_of(order)
    with CaptureQueriesContext(connection) as captured:
        drive()
    saga.refresh_from_db()
    assert saga.status == SagaStatus.COMPLETED and saga.finished_at and saga.deadline is None
    assert saga.context["confirmed"] is True  # the step's context update rode on the same UPDATE
    [completed] = OutboxEvent.objects.filter(aggregateid=str(saga.id), type="saga.completed")
    assert completed.payload == _event_payload(saga) and completed.payload["status"] == "completed"
    finishing = [q["sql"] for q in captured.captured_queries if "UPDATE sagas_instance" in q["sql"]]
    assert len(finishing) == 1 and "INSERT INTO outbox_event" in finishing[0]
