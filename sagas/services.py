"""The saga orchestrator: start, run a step under a lease, record its result, advance,
compensate, resume, sweep.

Every state change is a compare-and-set (`UPDATE … WHERE status = …`) made while holding the
saga row lock (taken after the definition's related rows: one lock order everywhere), and
writes its outbox event in the same transaction. Step tasks are enqueued on commit; a lost
message, a killed worker or an expired lease is found by `saga_sweep` and enqueued again. A
step's action runs with no transaction open; its result counts only if the step row still
carries the attempt number it was claimed with (the fencing token), so a worker that lost its
lease cannot overwrite the attempt that replaced it.
"""

from __future__ import annotations

import json
import logging
import random
import time
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from celery import current_app
from django.conf import settings
from django.db import connection, transaction
from django.db.models import Q
from django.utils import timezone

from common import telemetry
from common.correlation import get_correlation_id
from common.errors import Conflict, NotFound
from outbox.services import outbox_publish, outbox_publish_select
from sagas import metrics
from sagas.definitions import (
    SagaDefinition,
    Step,
    StepCall,
    StepRejected,
    StepRetry,
    StepSkipped,
    saga_definition,
    saga_definitions,
)
from sagas.models import SagaInstance, SagaStatus, SagaStep, StepKind, StepStatus

logger = logging.getLogger(__name__)

STEP_TASK_NAME = "sagas.tasks.saga_step_run"  # sagas/tasks.py registers it under this name
AGGREGATE_TYPE = "saga"
SAGA_STARTED = "saga.started"
SAGA_COMPLETED = "saga.completed"
SAGA_COMPENSATED = "saga.compensated"
SAGA_FAILED = "saga.failed"
# Re-enqueue a pending step only when its message should long have run (avoids piling duplicates).
SWEEP_PENDING_GRACE = timedelta(seconds=2)


class SagaNotFound(NotFound):
    slug, title = "saga-not-found", "Saga not found"


class SagaNotResumable(Conflict):
    slug, title = "saga-not-resumable", "The saga cannot be resumed or compensated in its state"


@dataclass(frozen=True, slots=True)
class StepRunResult:
    outcome: str  # succeeded | skipped | retry | failed | rejected | not_claimed | stale
    attempt: int = 0


# --- helpers --------------------------------------------------------------------------------
def _event_payload(saga: SagaInstance) -> dict[str, Any]:
    return {
        "saga_id": str(saga.id),
        "saga_type": saga.saga_type,
        "status": saga.status,
        "reference": saga.reference,
        "reason": saga.reason,
    }


# The same object as _event_payload(), built by PostgreSQL from the saga row the statement
# itself wrote (CTE `saga`: saga_start's INSERT, _finish's UPDATE … RETURNING); the two sit
# together so a field added to one is added to both.
_EVENT_SQL = """
SELECT 'saga' AS aggregatetype, saga.id::text AS aggregateid, %(event_type)s AS type,
       jsonb_build_object(
           'saga_id', saga.id::text, 'saga_type', saga.saga_type, 'status', saga.status,
           'reference', saga.reference, 'reason', saga.reason
       ) AS payload
FROM saga
"""
assert f"'{AGGREGATE_TYPE}' AS aggregatetype" in _EVENT_SQL
_EVENT_COLUMNS = "id, saga_type, status, reference, reason"  # what _EVENT_SQL reads


def _event(saga: SagaInstance, type: str) -> None:
    outbox_publish(
        aggregatetype=AGGREGATE_TYPE, aggregateid=str(saga.id), type=type, payload=_event_payload(saga)
    )


def _count_on_commit(saga_type: str, outcome: str) -> None:
    transaction.on_commit(lambda: metrics.SAGAS_FINISHED.labels(saga_type, outcome).inc())


def _send(saga_id: str, name: str, kind: str, countdown: float | None) -> None:
    try:
        current_app.send_task(
            STEP_TASK_NAME,
            kwargs={"saga_id": saga_id, "name": name, "kind": kind},
            countdown=countdown,
            retry=False,
        )
    except Exception as exc:  # committed already; the sweep enqueues it again
        logger.warning("saga step %s/%s not enqueued (the sweep will): %s", saga_id, name, exc)


def _enqueue_on_commit(saga: SagaInstance, name: str, kind: str, countdown: float | None = None) -> None:
    saga_id = str(saga.id)
    transaction.on_commit(lambda: _send(saga_id, name, kind, countdown))


def _commit_without_flush() -> None:
    """Let this transaction commit without waiting for its WAL flush (SAGA_ASYNC_COMMIT,
    PostgreSQL `synchronous_commit = off` for this transaction only).

    Only for the orchestrator's own bookkeeping, which writes nothing outside the saga tables
    (no outbox event, no order change): a step's claim, a retry's backoff, a step's success that
    leaves the saga running. A database crash can lose the last such commits (never a worker's
    crash: the commit itself happened), and losing them is what a killed worker already does:
    the step is run again after its lease with the same idempotency key, so its effect happens
    once. Any later synchronous commit (the payment, the order's, the saga's end with its
    event) flushes the WAL up to it, so nothing durable ever depends on a lost one. Each saves
    one WAL flush (a disk sync) per step."""
    if settings.SAGA_ASYNC_COMMIT and connection.vendor == "postgresql" and connection.in_atomic_block:
        with connection.cursor() as cursor:
            cursor.execute("SET LOCAL synchronous_commit TO OFF")


def _waits(definition: type[SagaDefinition]) -> list[str]:
    return [step.name for step in definition.steps if step.is_wait]


def _max_attempts(step: Step) -> int:
    return step.max_attempts or settings.SAGA_STEP_MAX_ATTEMPTS


def _lease(step: Step) -> timedelta:
    return timedelta(seconds=step.timeout_seconds or settings.SAGA_STEP_LEASE_SECONDS)


def backoff_delay(*, attempt: int, base: float | None = None) -> float:
    """Full jitter: uniform in [0, min(cap, base·2^(attempt-1))], at least a tenth of the base."""
    base = settings.SAGA_BACKOFF_BASE_SECONDS if base is None else base
    ceiling = min(settings.SAGA_BACKOFF_CAP_SECONDS, base * 2 ** max(0, attempt - 1))
    return max(base / 10, random.uniform(0, ceiling))


def _lock(saga_id: uuid.UUID | str) -> tuple[SagaInstance, type[SagaDefinition]]:
    """Lock the definition's related rows, then the saga row."""
    head = SagaInstance.objects.filter(pk=saga_id).values("saga_type", "reference").first()
    if head is None:
        raise SagaNotFound(f"Saga {saga_id} does not exist.")
    definition = saga_definition(head["saga_type"])
    related = definition.lock_related(head["reference"])
    saga = SagaInstance.objects.select_for_update().get(pk=saga_id)
    saga.related = related  # type: ignore[attr-defined]
    return saga, definition


def _saga_set(saga: SagaInstance, *, expected: str, now: datetime, **fields: Any) -> bool:
    updated = SagaInstance.objects.filter(pk=saga.pk, status=expected).update(updated_at=now, **fields)
    if updated:
        for name, value in fields.items():
            setattr(saga, name, value)
        saga.updated_at = now
    return bool(updated)


def _finish(
    saga: SagaInstance, *, expected: str, status: str, event: str, now: datetime, **fields: Any
) -> bool:
    """The saga's last compare-and-set and its outbox event: on PostgreSQL ONE statement (the
    outbox INSERT … SELECT reads the row the UPDATE … RETURNING changed)."""
    fields = {"status": status, "finished_at": now, "deadline": None, **fields}
    if connection.vendor != "postgresql":
        if not _saga_set(saga, expected=expected, now=now, **fields):
            return False
        _event(saga, event)
    else:
        values: dict[str, Any] = {"saga_pk": saga.pk, "expected": expected, "event_type": event}
        assignments = []
        for index, (name, value) in enumerate({**fields, "updated_at": now}.items()):
            field = SagaInstance._meta.get_field(name)
            assignments.append(f"{connection.ops.quote_name(field.column)} = %(set_{index})s")
            values[f"set_{index}"] = field.get_db_prep_save(value, connection)
        # Only column names from the model and placeholders are interpolated; values are parameters.
        with_sql = (
            f"saga AS (UPDATE sagas_instance SET {', '.join(assignments)} "  # noqa: S608
            f"WHERE id = %(saga_pk)s AND status = %(expected)s RETURNING {_EVENT_COLUMNS})"
        )
        if not outbox_publish_select(with_sql=with_sql, select_sql=_EVENT_SQL, params=values):
            return False
        for name, value in fields.items():
            setattr(saga, name, value)
        saga.updated_at = now
    _count_on_commit(saga.saga_type, status)
    return True


# --- start ----------------------------------------------------------------------------------
# The saga row, its action steps (the first already scheduled when it is an action: what
# `_advance` would do after reading it back) and `saga.started`, in ONE statement: the outbox
# INSERT … SELECT reads the saga row from the data-modifying CTE that wrote it.
_START_WITH_SQL = """
saga AS (
    INSERT INTO sagas_instance (id, saga_type, status, context, reference, correlation_id,
                                traceparent, current_step, deadline, reason, created_at,
                                updated_at, finished_at)
    VALUES (%(saga_id)s, %(saga_type)s, %(status)s, %(context)s, %(reference)s, %(correlation_id)s,
            %(traceparent)s, %(current_step)s, NULL, '', %(now)s, %(now)s, NULL)
    RETURNING id, saga_type, status, reference, reason  -- _EVENT_COLUMNS
),
steps AS (
    INSERT INTO sagas_step (saga_id, name, kind, position, status, attempts, last_error,
                            not_before, lease_expires_at, started_at, finished_at, duration_ms)
    SELECT saga.id, step.name, 'action', step.ordinality - 1, 'pending', 0, '',
           CASE WHEN step.ordinality = 1 AND %(scheduled)s THEN %(now)s::timestamptz END,
           NULL, NULL, NULL, NULL
    FROM saga, unnest(%(names)s::text[]) WITH ORDINALITY AS step(name, ordinality)
)
"""


def saga_start(
    *,
    saga_type: str,
    context: dict[str, Any],
    reference: str = "",
    now: datetime | None = None,
    saga_id: uuid.UUID | None = None,
) -> SagaInstance:
    """Create the saga and its action steps, write `saga.started`, and enqueue the first step on
    commit. Runs inside the caller's transaction (a rollback leaves no saga). On PostgreSQL the
    three writes are one statement (one round trip in the caller's transaction)."""
    now = now or timezone.now()
    definition = saga_definition(saga_type)
    first = definition.steps[0]
    scheduled = not first.is_wait
    saga = SagaInstance(
        id=saga_id or uuid.uuid4(),
        saga_type=saga_type,
        status=SagaStatus.RUNNING,
        context=context,
        current_step=first.name if scheduled else "",
        reference=str(reference),
        correlation_id=get_correlation_id() or "",
        traceparent=telemetry.carried_traceparent() or "",
        created_at=now,
        updated_at=now,
    )
    with transaction.atomic(savepoint=False):
        if connection.vendor == "postgresql":
            from psycopg.types.json import Jsonb

            outbox_publish_select(
                with_sql=_START_WITH_SQL,
                select_sql=_EVENT_SQL,
                params={
                    "event_type": SAGA_STARTED,
                    "saga_id": saga.id,
                    "saga_type": saga.saga_type,
                    "status": saga.status,
                    "context": Jsonb(context),
                    "reference": saga.reference,
                    "correlation_id": saga.correlation_id,
                    "traceparent": saga.traceparent,
                    "current_step": saga.current_step,
                    "now": now,
                    "scheduled": scheduled,
                    "names": [step.name for step in definition.steps],
                },
            )
            saga._state.adding = False
            saga._state.db = connection.alias
        else:
            saga.save(force_insert=True)
            SagaStep.objects.bulk_create(
                [
                    SagaStep(
                        saga=saga,
                        name=step.name,
                        kind=StepKind.ACTION,
                        position=position,
                        not_before=now if scheduled and position == 0 else None,
                    )
                    for position, step in enumerate(definition.steps)
                ]
            )
            _event(saga, SAGA_STARTED)
        _count_on_commit(saga_type, "started")
        if scheduled:
            _enqueue_on_commit(saga, first.name, StepKind.ACTION)
        else:
            _advance(saga, definition, after=-1, now=now)
    return saga


# The next pending action step after a position, scheduled in the same statement that finds it:
# a wait step becomes running (waiting for its event), an action step gets not_before = now.
# `{after}` is the position: a parameter, or the RETURNING of the statement's own CTE that
# finished the step before it (_RECORD_ADVANCE_SQL, _WAIT_COMPLETE_SQL).
_ADVANCE_TEMPLATE = """
UPDATE sagas_step SET
    status = CASE WHEN name = ANY(%(waits)s) THEN 'running' ELSE status END,
    attempts = CASE WHEN name = ANY(%(waits)s) THEN 1 ELSE attempts END,
    started_at = CASE WHEN name = ANY(%(waits)s) THEN %(now)s ELSE started_at END,
    not_before = CASE WHEN name = ANY(%(waits)s) THEN NULL ELSE %(now)s END
WHERE id = (
    SELECT id FROM sagas_step
    WHERE saga_id = {saga} AND kind = 'action' AND position > {after} AND status = 'pending'
    ORDER BY position LIMIT 1
) AND status = 'pending'
RETURNING id, name, position
"""
_ADVANCE_SQL = _ADVANCE_TEMPLATE.format(saga="%(saga)s", after="%(after)s")


def _with_advance(head: str, tail: str, saga: str = "%(saga)s") -> str:
    """A statement whose CTE `done` finished a step (RETURNING position), then `following`: the
    advance after that position, then `tail`. Only these constants are joined, no value."""
    following = _ADVANCE_TEMPLATE.format(saga=saga, after="(SELECT position FROM done)")
    return f"{head}{following}{tail}"


_NOT_FETCHED = object()


def _advance(
    saga: SagaInstance,
    definition: type[SagaDefinition],
    *,
    after: int,
    now: datetime,
    fields: dict[str, Any] | None = None,
    following: Any = _NOT_FETCHED,
) -> None:
    """Start the next action step after position `after`, or complete the saga. `fields` (a
    context update) ride on the saga's compare-and-set UPDATE. `following`: the row the caller's
    statement already found and scheduled (id, name, position), or None for none."""
    fields = fields or {}
    if following is _NOT_FETCHED:
        with connection.cursor() as cursor:
            cursor.execute(
                _ADVANCE_SQL, {"waits": _waits(definition), "now": now, "saga": saga.pk, "after": after}
            )
            following = cursor.fetchone()
    if following is None:
        _finish(
            saga,
            expected=SagaStatus.RUNNING,
            status=SagaStatus.COMPLETED,
            event=SAGA_COMPLETED,
            now=now,
            **fields,
        )
        return
    step_pk, name, position = following
    step = definition.step(name)
    if step.is_wait:
        # A wait step is "running" from now until its event arrives or its deadline passes.
        if fields:  # the hook and the deadline see the updated context
            for key, value in fields.items():
                setattr(saga, key, value)
        if definition.wait_satisfied(saga, step.name):
            # Its event came before the step started (a payment during the reservation).
            SagaStep.objects.filter(pk=step_pk).update(status=StepStatus.SUCCEEDED, finished_at=now)
            _advance(saga, definition, after=position, now=now, fields=fields)
            return
        deadline = step.deadline(saga) if step.deadline else None
        _saga_set(
            saga, expected=SagaStatus.RUNNING, now=now, current_step=step.name, deadline=deadline, **fields
        )
        return
    _saga_set(saga, expected=SagaStatus.RUNNING, now=now, current_step=step.name, deadline=None, **fields)
    _enqueue_on_commit(saga, step.name, StepKind.ACTION)


# --- running a step -------------------------------------------------------------------------
# The claim and the load in one statement (autocommit: it commits before the action runs, with
# `lazy` without waiting for the WAL flush, see `_commit_without_flush`): a
# pending step once scheduled (not_before set by _advance, a retry, resume), or a running one
# whose lease expired → running, attempts + 1, a fresh lease (per saga type, from its definition).
_CLAIM_SQL = """
UPDATE sagas_step AS s SET
    status = 'running',
    attempts = s.attempts + 1,
    lease_expires_at = %(now)s + make_interval(secs => (%(leases)s::jsonb ->> i.saga_type)::float8),
    started_at = %(now)s,
    not_before = NULL
FROM sagas_instance AS i
WHERE i.id = %(saga)s AND s.saga_id = i.id AND s.name = %(name)s AND s.kind = %(kind)s
  AND i.status = %(saga_status)s AND %(leases)s::jsonb ? i.saga_type
  AND ((s.status = 'pending' AND s.not_before <= %(now)s)
       OR (s.status = 'running' AND s.lease_expires_at <= %(now)s))
  AND (SELECT CASE WHEN %(lazy)s THEN set_config('synchronous_commit', 'off', true) ELSE 'off' END) = 'off'
RETURNING s.id, s.position, s.attempts, i.saga_type, i.reference, i.context, i.traceparent
"""


@dataclass(frozen=True, slots=True)
class _Claimed:
    pk: int
    name: str
    kind: str
    position: int
    attempts: int
    saga_type: str
    reference: str
    context: dict[str, Any]
    traceparent: str


def _claim(*, saga_id: str, name: str, kind: str, now: datetime) -> _Claimed | None:
    """Compare-and-set the step to running under a fresh lease; None when another holds it,
    it is finished, its backoff is not over, or the saga is not in the matching state."""
    saga_status = SagaStatus.RUNNING if kind == StepKind.ACTION else SagaStatus.COMPENSATING
    leases = {}
    for saga_type, definition in saga_definitions().items():
        try:
            leases[saga_type] = _lease(definition.step(name)).total_seconds()
        except KeyError:
            continue
    try:
        saga_pk = uuid.UUID(str(saga_id))
    except ValueError:
        return None
    # Autocommit: the statement is its own transaction, committed without the WAL flush
    # (`_commit_without_flush`) unless the caller has a transaction open.
    lazy = settings.SAGA_ASYNC_COMMIT and not connection.in_atomic_block
    with connection.cursor() as cursor:
        cursor.execute(
            _CLAIM_SQL,
            {
                "lazy": lazy,
                "now": now,
                "leases": json.dumps(leases),
                "saga": saga_pk,
                "name": name,
                "kind": kind,
                "saga_status": saga_status,
            },
        )
        row = cursor.fetchone()
    if row is None:
        return None
    pk, position, attempts, saga_type, reference, context, traceparent = row
    if isinstance(context, str):
        context = json.loads(context)
    return _Claimed(pk, name, kind, position, attempts, saga_type, reference, context, traceparent)


def saga_step_run(*, saga_id: str, name: str, kind: str, now: datetime | None = None) -> StepRunResult:
    """Claim, run (no transaction open) and record one attempt of a step. Idempotent: a
    duplicate message finds the step claimed or finished and does nothing."""
    now = now or timezone.now()
    claimed = _claim(saga_id=saga_id, name=name, kind=kind, now=now)
    if claimed is None:
        return StepRunResult("not_claimed")
    definition = saga_definition(claimed.saga_type)
    step = definition.step(name)
    function = step.action if kind == StepKind.ACTION else step.compensation
    suffix = step.idempotency_suffix if kind == StepKind.ACTION else name
    call = StepCall(
        saga_id=str(saga_id),
        context=dict(claimed.context),
        idempotency_key=f"{saga_id}:{suffix}",
        attempt=claimed.attempts,
    )
    started = time.perf_counter()
    update: dict[str, Any] | None = None
    error = ""
    # In the trace of the work that started the saga, whichever task, retry or sweep runs it.
    with telemetry.span(
        "saga.step",
        parent_traceparent=claimed.traceparent or None,
        attributes={
            "saga.name": claimed.saga_type,
            "saga.id": str(saga_id),
            "saga.step": name,
            "saga.step_kind": kind,
            "saga.attempt": claimed.attempts,
        },
    ) as span:
        if claimed.attempts > _max_attempts(step):
            outcome, error = "failed", "lease expired on the last attempt"
        else:
            try:
                assert function is not None
                update = function(call)
                outcome = "succeeded"
            except StepSkipped as exc:
                outcome, error = "skipped", str(exc)
            except StepRejected as exc:
                outcome, error = "rejected", f"{exc.reason}: {exc}"
                update = {"_reason": exc.reason}
            except StepRetry as exc:
                outcome, error = "retry", str(exc) or exc.__class__.__name__
            except Exception as exc:  # a bug or an unexpected answer: retried like a transient error
                logger.exception("saga step %s/%s raised", saga_id, name)
                outcome, error = "retry", f"{exc.__class__.__name__}: {exc}"
            if outcome == "retry" and claimed.attempts >= _max_attempts(step):
                outcome = "failed"
        span.set_attribute("saga.outcome", outcome)
        if outcome in ("retry", "failed"):
            span.set_error(error)
    duration = time.perf_counter() - started
    metrics.STEP_DURATION.labels(claimed.saga_type, name, outcome).observe(duration)
    recorded = _step_record(
        saga_id=saga_id,
        step_row=claimed,
        step=step,
        definition=definition,
        outcome=outcome,
        error=error,
        update=update,
        duration_ms=duration * 1000,
        now=timezone.now(),
    )
    return StepRunResult(outcome if recorded else "stale", claimed.attempts)


# A step attempt's fenced result (still running with the attempt it was claimed with) and, when
# it succeeded, the advance to the next action step: ONE statement. Returns whether the result
# was recorded, and the next step it scheduled (id, name, position; NULLs for none).
_RECORD_ADVANCE_SQL = _with_advance(
    """
WITH done AS (
    UPDATE sagas_step SET status = %(status)s, finished_at = %(now)s, last_error = %(error)s,
        duration_ms = %(duration)s, lease_expires_at = NULL
    WHERE id = %(pk)s AND status = 'running' AND attempts = %(attempts)s
    RETURNING position
), following AS (""",
    """)
SELECT (SELECT count(*) FROM done), following.id, following.name, following.position
FROM (SELECT 1) AS one LEFT JOIN following ON true
""",
)


@transaction.atomic
def _step_record(
    *,
    saga_id: str,
    step_row: _Claimed,
    step: Step,
    definition: type[SagaDefinition],
    outcome: str,
    error: str,
    update: dict[str, Any] | None,
    duration_ms: float,
    now: datetime,
) -> bool:
    """Record the attempt, advance and enqueue the next step, in ONE transaction. The claim
    returned the saga's type and reference, so the locks are taken without reading them again."""
    related = definition.lock_related(step_row.reference)
    saga = SagaInstance.objects.select_for_update().get(pk=saga_id)
    saga.related = related  # type: ignore[attr-defined]
    fenced = SagaStep.objects.filter(pk=step_row.pk, status=StepStatus.RUNNING, attempts=step_row.attempts)
    common = {"last_error": error[:2000], "duration_ms": duration_ms, "lease_expires_at": None}
    if outcome == "retry":
        delay = backoff_delay(attempt=step_row.attempts, base=step.backoff_base_seconds)
        if not fenced.update(status=StepStatus.PENDING, not_before=now + timedelta(seconds=delay), **common):
            return False
        _enqueue_on_commit(saga, step_row.name, step_row.kind, countdown=delay)
        _commit_without_flush()
        return True
    status = {
        "succeeded": StepStatus.SUCCEEDED,
        "skipped": StepStatus.SKIPPED,
        "rejected": StepStatus.FAILED,
        "failed": StepStatus.FAILED,
    }[outcome]
    action = step_row.kind == StepKind.ACTION
    following: Any = _NOT_FETCHED
    if action and outcome in ("succeeded", "skipped"):
        # The fenced result and the advance to the next step: one statement.
        with connection.cursor() as cursor:
            cursor.execute(
                _RECORD_ADVANCE_SQL,
                {
                    "pk": step_row.pk,
                    "attempts": step_row.attempts,
                    "status": status,
                    "error": common["last_error"],
                    "duration": duration_ms,
                    "waits": _waits(definition),
                    "now": now,
                    "saga": saga.pk,
                },
            )
            recorded, *row = cursor.fetchone()
        if not recorded:
            return False
        following = tuple(row) if row[0] is not None else None
    elif not fenced.update(status=status, finished_at=now, **common):
        return False
    fields: dict[str, Any] = {}
    if action and outcome == "succeeded" and update:
        context = {**saga.context, **update}
        if saga.status == SagaStatus.RUNNING and outcome in ("succeeded", "skipped"):
            fields["context"] = context  # written by the advance's compare-and-set UPDATE
        else:
            saga.context = context
            SagaInstance.objects.filter(pk=saga.pk).update(context=context)
    if action and outcome in ("succeeded", "skipped"):
        _advance(saga, definition, after=step_row.position, now=now, fields=fields, following=following)
        if saga.status == SagaStatus.RUNNING:  # not finished: no outbox event, no hook's change
            _commit_without_flush()
    elif action:
        reason = (update or {}).get("_reason") or f"{step_row.name}_failed"
        _compensation_begin(saga, definition, reason=reason, now=now)
    elif outcome in ("succeeded", "skipped"):
        if outcome == "succeeded":
            saga_type, name = saga.saga_type, step_row.name
            transaction.on_commit(lambda: metrics.COMPENSATIONS.labels(saga_type, name).inc())
        _compensation_next(saga, now=now)
    else:
        _finish(
            saga,
            expected=SagaStatus.COMPENSATING,
            status=SagaStatus.FAILED,
            event=SAGA_FAILED,
            now=now,
            current_step=step_row.name,
        )
    return True


# --- compensation ---------------------------------------------------------------------------
def _compensation_begin(
    saga: SagaInstance, definition: type[SagaDefinition], *, reason: str, now: datetime
) -> bool:
    """running → compensating: skip what has not finished, queue the compensations of the
    succeeded steps (and of a step caught mid-flight, whose effect may have happened) in reverse."""
    if not _saga_set(
        saga,
        expected=SagaStatus.RUNNING,
        now=now,
        status=SagaStatus.COMPENSATING,
        reason=reason,
        deadline=None,
    ):
        return False
    rows = list(SagaStep.objects.filter(saga=saga, kind=StepKind.ACTION).order_by("position"))
    in_flight = [row for row in rows if row.status == StepStatus.RUNNING]
    SagaStep.objects.filter(
        saga=saga, kind=StepKind.ACTION, status__in=[StepStatus.PENDING, StepStatus.RUNNING]
    ).update(status=StepStatus.SKIPPED, finished_at=now, lease_expires_at=None, not_before=None)
    to_undo = [
        row
        for row in rows
        if (
            row.status == StepStatus.SUCCEEDED or (row in in_flight and not definition.step(row.name).is_wait)
        )
        and definition.step(row.name).compensation is not None
    ]
    SagaStep.objects.bulk_create(
        [
            SagaStep(
                saga=saga,
                name=definition.step(row.name).compensation_name,
                kind=StepKind.COMPENSATION,
                position=row.position,
            )
            for row in to_undo
        ],
        ignore_conflicts=True,
    )
    definition.on_compensation_started(saga, reason)
    _compensation_next(saga, now=now)
    return True


def _compensation_next(saga: SagaInstance, *, now: datetime) -> None:
    following = (
        SagaStep.objects.filter(saga=saga, kind=StepKind.COMPENSATION, status=StepStatus.PENDING)
        .order_by("-position")
        .first()
    )
    if following is None:
        _finish(
            saga,
            expected=SagaStatus.COMPENSATING,
            status=SagaStatus.COMPENSATED,
            event=SAGA_COMPENSATED,
            now=now,
        )
        return
    SagaStep.objects.filter(pk=following.pk).update(not_before=now)
    _saga_set(saga, expected=SagaStatus.COMPENSATING, now=now, current_step=following.name)
    _enqueue_on_commit(saga, following.name, StepKind.COMPENSATION)


@transaction.atomic
def saga_compensate(
    *, saga_id: uuid.UUID | str, reason: str = "operator", now: datetime | None = None
) -> SagaInstance:
    """Give up on a running saga: its succeeded steps are compensated in reverse order."""
    now = now or timezone.now()
    saga, definition = _lock(saga_id)
    if saga.status != SagaStatus.RUNNING or not _compensation_begin(saga, definition, reason=reason, now=now):
        raise SagaNotResumable(f"Saga {saga.id} is {saga.status}; only a running saga can be compensated.")
    return saga


# --- events into the saga -------------------------------------------------------------------
# A wait step's event, for the saga of (type, reference), in ONE statement: the saga row locked
# (the caller holds the related rows' locks: one lock order; no row → no saga, nothing
# recorded), the event recorded once per (consumer group, event) in processed_events (INSERT …
# ON CONFLICT DO NOTHING, no savepoint), and only when it is new and the saga running, the wait
# step succeeds by compare-and-set (its duration measured from when it started waiting) and
# the next step is scheduled.
_WAIT_COMPLETE_SQL = _with_advance(
    """
WITH saga AS (
    SELECT * FROM sagas_instance WHERE saga_type = %(saga_type)s AND reference = %(reference)s
    ORDER BY created_at LIMIT 1 FOR UPDATE
), recorded AS (
    INSERT INTO processed_events (event_id, consumer_group_name, processed_at, outcome)
    SELECT %(event_id)s, %(group)s, %(now)s, %(name)s FROM saga
    ON CONFLICT (consumer_group_name, event_id) DO NOTHING RETURNING id
), done AS (
    UPDATE sagas_step SET status = 'succeeded', finished_at = %(now)s,
        duration_ms = EXTRACT(EPOCH FROM (%(now)s - COALESCE(started_at, %(now)s))) * 1000
    WHERE saga_id = (SELECT id FROM saga) AND name = %(name)s AND kind = 'action'
      AND status = 'running' AND (SELECT status FROM saga) = 'running'
      AND EXISTS (SELECT 1 FROM recorded)
    RETURNING position
), following AS (""",
    """)
SELECT (SELECT count(*) FROM recorded), (SELECT position FROM done),
       following.id, following.name, following.position, saga.*
FROM saga LEFT JOIN following ON true
""",
    saga="(SELECT id FROM saga)",
)


def saga_wait_complete(
    *,
    saga_type: str,
    reference: str,
    step_name: str,
    event_id: str,
    consumer_group_name: str,
    update: dict[str, Any] | None = None,
    now: datetime | None = None,
) -> bool:
    """A wait step's event arrived for the saga of (type, reference): record it once, succeed
    the step (compare-and-set) and advance, the saga row locked in the same statement (the
    caller holds the related rows' locks, e.g. the order's). False when there is no such saga,
    for a duplicate, or when the saga no longer waits on it. An event that comes before its
    step started keeps its `update` in the context (the definition's `wait_satisfied`
    completes the step then)."""
    now = now or timezone.now()
    definition = saga_definition(saga_type)
    with connection.cursor() as cursor:
        cursor.execute(
            _WAIT_COMPLETE_SQL,
            {
                "saga_type": saga_type,
                "reference": str(reference),
                "event_id": event_id,
                "group": consumer_group_name,
                "name": step_name,
                "waits": _waits(definition),
                "now": now,
            },
        )
        row = cursor.fetchone()
        columns = [column.name for column in cursor.description][5:]
    if row is None:
        return False
    recorded, position, *following = row[:5]
    saga = SagaInstance.from_db(connection.alias, columns, row[5:])
    if isinstance(saga.context, str):
        saga.context = json.loads(saga.context)
    if not recorded or saga.status != SagaStatus.RUNNING:
        return False
    if position is None:
        if update:
            _saga_set(saga, expected=SagaStatus.RUNNING, now=now, context={**saga.context, **update})
        return False
    fields = {"context": {**saga.context, **update}} if update else {}
    _advance(
        saga,
        definition,
        after=position,
        now=now,
        fields=fields,
        following=tuple(following) if following[0] is not None else None,
    )
    return True


def saga_close(
    *, saga: SagaInstance, definition: type[SagaDefinition], reason: str, now: datetime | None = None
) -> bool:
    """The business object the saga serves is gone (order paid-failed, expired, cancelled):
    compensate if still running (caller holds the lock). False when it was not running."""
    return _compensation_begin(saga, definition, reason=reason, now=now or timezone.now())


def saga_lock_by_reference(*, saga_type: str, reference: str) -> SagaInstance | None:
    """The saga row of (type, reference), locked; the caller already holds the related rows."""
    return (
        SagaInstance.objects.select_for_update()
        .filter(saga_type=saga_type, reference=str(reference))
        .order_by("created_at")
        .first()
    )


# --- operators ------------------------------------------------------------------------------
@transaction.atomic
def saga_resume(*, saga_id: uuid.UUID | str, now: datetime | None = None) -> str:
    """Try again: a failed saga's failed compensation gets fresh attempts (status
    compensating); an open saga's current step is enqueued again. Returns what was done."""
    now = now or timezone.now()
    saga, _ = _lock(saga_id)
    if saga.status == SagaStatus.FAILED:
        SagaStep.objects.filter(saga=saga, kind=StepKind.COMPENSATION, status=StepStatus.FAILED).update(
            status=StepStatus.PENDING, attempts=0, finished_at=None, not_before=now
        )
        _saga_set(saga, expected=SagaStatus.FAILED, now=now, status=SagaStatus.COMPENSATING, finished_at=None)
        _compensation_next(saga, now=now)
        return "compensation resumed"
    if saga.status in (SagaStatus.RUNNING, SagaStatus.COMPENSATING):
        kind = StepKind.ACTION if saga.status == SagaStatus.RUNNING else StepKind.COMPENSATION
        # Scheduled steps (waiting for a backoff or a lost message) and leased ones (a dead
        # worker's: the claim takes them once the lease is over); never a wait step.
        rows = SagaStep.objects.filter(
            Q(status=StepStatus.PENDING, not_before__isnull=False)
            | Q(status=StepStatus.RUNNING, lease_expires_at__isnull=False),
            saga=saga,
            kind=kind,
        )
        count = 0
        for row in rows:
            if row.status == StepStatus.PENDING:
                SagaStep.objects.filter(pk=row.pk).update(not_before=now)  # the backoff is waived
            _enqueue_on_commit(saga, row.name, kind)
            count += 1
        return f"{count} step(s) enqueued" if count else "nothing to enqueue (waiting on an event or a lease)"
    raise SagaNotResumable(f"Saga {saga.id} is {saga.status}; there is nothing to resume.")


# --- the sweep ------------------------------------------------------------------------------
def saga_sweep(*, now: datetime | None = None, limit: int = 500) -> dict[str, int]:
    """Enqueue steps whose lease expired or whose message should have run; act on sagas whose
    wait step passed its deadline (compensate, complete, or wait longer)."""
    now = now or timezone.now()
    counts = {"enqueued": 0, "compensated": 0, "completed": 0}
    due = (
        SagaStep.objects.filter(
            Q(status=StepStatus.RUNNING, lease_expires_at__lte=now)
            | Q(status=StepStatus.PENDING, not_before__lte=now - SWEEP_PENDING_GRACE)
        )
        .filter(
            Q(kind=StepKind.ACTION, saga__status=SagaStatus.RUNNING)
            | Q(kind=StepKind.COMPENSATION, saga__status=SagaStatus.COMPENSATING)
        )
        .values_list("saga_id", "name", "kind")[:limit]
    )
    for saga_id, name, kind in due:
        _send(str(saga_id), name, kind, None)
        counts["enqueued"] += 1
    overdue = SagaInstance.objects.filter(status=SagaStatus.RUNNING, deadline__lte=now).values_list(
        "pk", flat=True
    )[:limit]
    for saga_id in overdue:
        outcome = saga_deadline_handle(saga_id=saga_id, now=now)
        counts[outcome] = counts.get(outcome, 0) + 1
    return counts


@transaction.atomic
def saga_deadline_handle(*, saga_id: uuid.UUID | str, now: datetime | None = None) -> str:
    """One saga past its wait deadline: the definition says compensate, complete, or a new deadline."""
    now = now or timezone.now()
    saga, definition = _lock(saga_id)
    if saga.status != SagaStatus.RUNNING or saga.deadline is None or saga.deadline > now:
        return "unchanged"
    decision = definition.on_deadline(saga, now)
    if decision == "compensate":
        _compensation_begin(saga, definition, reason="deadline", now=now)
        return "compensated"
    if decision == "complete":
        row = SagaStep.objects.filter(saga=saga, name=saga.current_step, kind=StepKind.ACTION).first()
        if row and SagaStep.objects.filter(pk=row.pk, status=StepStatus.RUNNING).update(
            status=StepStatus.SUCCEEDED, finished_at=now
        ):
            _advance(saga, definition, after=row.position, now=now)
            return "completed"
        return "unchanged"
    if isinstance(decision, datetime):
        _saga_set(saga, expected=SagaStatus.RUNNING, now=now, deadline=decision)
    return "waiting"
