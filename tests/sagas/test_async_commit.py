"""SAGA_ASYNC_COMMIT: only the orchestrator's own bookkeeping commits without waiting for the WAL
flush (a step's claim, a retry's backoff, a success that leaves the saga running); anything that
writes an outbox event or changes the order (the saga's end, a compensation, the payment, the
order's creation) commits synchronously."""

from __future__ import annotations

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from sagas.services import saga_step_run
from tests.sagas.conftest import drive, pay, place_order, saga_of

pytestmark = pytest.mark.django_db

LAZY = "SET LOCAL synchronous_commit TO OFF"  # a transaction that commits without the flush
LAZY_CLAIM = "CASE WHEN true THEN set_config('synchronous_commit', 'off', true)"  # an autocommit claim


def statements(captured) -> list[str]:
    return [q["sql"] for q in captured.captured_queries]


# Real transactions: a claim outside any transaction is its own autocommit statement.
@pytest.mark.django_db(transaction=True)
def test_claims_and_a_running_sagas_progress_skip_the_flush_the_end_does_not(inventory, settings):
    settings.SAGA_ASYNC_COMMIT = True
    with CaptureQueriesContext(connection) as created:
        order = place_order()
    saga_id = str(saga_of(order).id)
    with CaptureQueriesContext(connection) as reserve:
        assert saga_step_run(saga_id=saga_id, name="reserve_inventory", kind="action").outcome == "succeeded"
    with CaptureQueriesContext(connection) as paid:
        pay(order)
    with CaptureQueriesContext(connection) as confirm:
        assert saga_step_run(saga_id=saga_id, name="confirm_inventory", kind="action").outcome == "succeeded"
    # the order's creation and the payment: never lazy
    assert LAZY not in statements(created) + statements(paid)
    assert not any(LAZY_CLAIM in sql for sql in statements(created) + statements(paid))
    reserve_sql, confirm_sql = statements(reserve), statements(confirm)
    # reserve: the claim (one autocommit statement) and the record (the saga keeps running,
    # no event) are both lazy
    assert LAZY_CLAIM in reserve_sql[0] and "UPDATE sagas_step AS s" in reserve_sql[0]
    record = reserve_sql[reserve_sql.index("BEGIN") :]
    assert record[-2:] == [LAZY, "COMMIT"] and record.count(LAZY) == 1
    assert not any("outbox_event" in sql for sql in reserve_sql)
    # confirm: the claim is lazy, the record that completes the saga (its event) is not
    assert LAZY_CLAIM in confirm_sql[0]
    assert LAZY not in confirm_sql
    assert any("outbox_event" in sql for sql in confirm_sql[1:])


def test_a_compensation_commits_synchronously(inventory, settings):
    settings.SAGA_ASYNC_COMMIT = True
    inventory.modes["reserve"] = "reject"
    order = place_order()
    saga_id = str(saga_of(order).id)
    with CaptureQueriesContext(connection) as rejected:
        assert saga_step_run(saga_id=saga_id, name="reserve_inventory", kind="action").outcome == "rejected"
    sent = statements(rejected)
    assert LAZY not in sent  # the order's cancellation and the saga's end are durable
    assert any("outbox_event" in sql for sql in sent)


def test_off_means_every_commit_waits_for_the_flush(inventory, settings):
    settings.SAGA_ASYNC_COMMIT = False
    order = place_order()
    with CaptureQueriesContext(connection) as captured:
        drive()
        pay(order)
        drive()
    assert saga_of(order).status == "completed"
    assert LAZY not in statements(captured)
    assert not any("CASE WHEN true THEN set_config" in sql for sql in statements(captured))
