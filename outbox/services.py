"""Writing events into the outbox, inside the caller's business transaction."""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Iterable, Mapping
from datetime import timedelta
from typing import Any

from celery import current_app
from django.db import NotSupportedError, models, transaction
from django.db.models import NOT_PROVIDED
from django.utils import timezone

from common import telemetry
from common.correlation import get_correlation_id
from common.errors import ApplicationError
from outbox.models import OutboxEvent

logger = logging.getLogger(__name__)


class OutboxOutsideTransaction(ApplicationError):
    status, slug, title = 500, "outbox-outside-transaction", "Outbox write outside a transaction"


RELAY_TASK_NAME = "outbox.tasks.outbox_relay"  # outbox/tasks.py registers it under this name
_NUDGE_PAUSE_AFTER_FAILURE_SECONDS = 10.0
_NUDGE_WINDOW_SECONDS = 0.2


class _NudgeState:
    """Per-process debounce: under load one nudge per window plus one trailing nudge, not one
    task per committed request (each relay run drains everything committed before it starts)."""

    lock = threading.Lock()
    paused_until = 0.0  # after a broker failure
    last_immediate_at = float("-inf")
    trailing_runs_at = float("-inf")  # when the scheduled trailing nudge will start relaying


def _nudge_relay() -> None:
    """Ask a worker to relay now. Never raises: the business transaction has already committed,
    and the beat entry relays the backlog anyway. After a failure nudges pause for a few seconds,
    so a broker outage costs one slow commit callback, not one per request."""
    now = time.monotonic()
    with _NudgeState.lock:
        if now < _NudgeState.paused_until or now <= _NudgeState.trailing_runs_at:
            return  # paused, or a nudge already scheduled to run after this commit covers it
        if now - _NudgeState.last_immediate_at >= _NUDGE_WINDOW_SECONDS:
            countdown = None
            _NudgeState.last_immediate_at = now
        else:  # a nudge just went out and may already be running: follow up once, later
            countdown = _NUDGE_WINDOW_SECONDS
            _NudgeState.trailing_runs_at = now + _NUDGE_WINDOW_SECONDS
    try:
        # By its registered name: outbox/tasks.py imports this module, never the other way.
        current_app.send_task(RELAY_TASK_NAME, retry=False, expires=60, countdown=countdown)
    except Exception as exc:
        with _NudgeState.lock:
            _NudgeState.paused_until = time.monotonic() + _NUDGE_PAUSE_AFTER_FAILURE_SECONDS
            _NudgeState.trailing_runs_at = float("-inf")
        logger.warning("outbox relay nudge not sent (the beat entry will relay): %s", exc)


def _nudge_relay_on_commit(using: str) -> None:
    """At most one nudge per transaction, however many events it writes."""
    connection = transaction.get_connection(using)
    if any(entry[1] is _nudge_relay for entry in connection.run_on_commit):
        return
    transaction.on_commit(_nudge_relay, using=using)


def _event_headers(extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """What an event carries of the work that wrote it: the correlation id and the W3C trace
    context (`traceparent`), so its delivery continues that trace; then the caller's own."""
    headers = {
        "correlation_id": get_correlation_id(),
        "traceparent": telemetry.carried_traceparent(),
        **(extra or {}),
    }
    return {key: value for key, value in headers.items() if value}


def outbox_publish(
    *,
    aggregatetype: str,
    aggregateid: str,
    type: str,
    payload: dict[str, Any],
    headers: dict[str, str] | None = None,
    event_id: uuid.UUID | None = None,
    using: str = "default",
) -> OutboxEvent:
    """Record an event in the current transaction; it is relayed only if that transaction commits.

    `event_id` lets the caller name the event deterministically when the same fact may be
    emitted again later (a redelivered input whose dedupe record was purged): the re-emission
    carries the same id, so consumers deduping by event id act once. If a row with that id
    already exists nothing is written (INSERT … ON CONFLICT DO NOTHING, in the caller's
    transaction) and the stored event is returned.
    """
    if not transaction.get_connection(using).in_atomic_block:
        raise OutboxOutsideTransaction(
            "outbox_publish() must run inside the business transaction (transaction.atomic)."
        )
    _nudge_relay_on_commit(using)
    event = OutboxEvent(
        aggregatetype=aggregatetype,
        aggregateid=str(aggregateid),
        type=type,
        payload=payload,
        headers=_event_headers(headers),
    )
    if event_id is None:
        event.save(using=using, force_insert=True)
        return event
    event.id = event_id
    # The primary key is the only unique constraint, so "conflict" means "this id exists". No
    # savepoint needed, and a concurrent twin waits on the key and then does nothing.
    OutboxEvent.objects.using(using).bulk_create([event], ignore_conflicts=True)
    return OutboxEvent.objects.using(using).get(pk=event_id)


def outbox_publish_many(
    *,
    events: Iterable[Mapping[str, Any]],
    using: str = "default",
    batch_size: int = 2000,
) -> int:
    """Record many events in the current transaction in bulk (COPY on PostgreSQL).

    Each event is a mapping with `aggregatetype`, `aggregateid`, `type`, `payload` and optional
    `headers` (as for outbox_publish). Bulk writers (the order expiry sweep: up to a million rows)
    would spend most of their time in per-row INSERTs otherwise; on PostgreSQL the rows are
    streamed with COPY, elsewhere inserted with bulk_create. Events are given strictly increasing
    `created_at` in iteration order, and the database fills `sequence` in insertion order, so
    several events of one aggregate in one call keep their order. Returns the number written.
    """
    connection = transaction.get_connection(using)
    if not connection.in_atomic_block:
        raise OutboxOutsideTransaction(
            "outbox_publish_many() must run inside the business transaction (transaction.atomic)."
        )
    common_headers = _event_headers()
    base = timezone.now()
    rows = []
    for index, event in enumerate(events):
        event_headers = {**common_headers, **(event.get("headers") or {})}
        rows.append(
            {
                "id": uuid.uuid4(),
                "aggregatetype": event["aggregatetype"],
                "aggregateid": str(event["aggregateid"]),
                "type": event["type"],
                "payload": event["payload"],
                "headers": {key: value for key, value in event_headers.items() if value},
                "created_at": base + timedelta(microseconds=index),
                "available_at": base,
            }
        )
    if not rows:
        return 0
    _nudge_relay_on_commit(using)
    if connection.vendor == "postgresql":
        _copy_postgresql(connection, rows)
    else:
        objects = [OutboxEvent(**row) for row in rows]
        OutboxEvent.objects.using(using).bulk_create(objects, batch_size=batch_size)
    return len(rows)


def _copy_postgresql(connection: Any, rows: list[dict[str, Any]]) -> None:
    """COPY the rows; columns the database fills itself (db_default: `sequence`) are left out,
    every other column takes the row's value or the model field's default."""
    from psycopg.types.json import Jsonb

    fields = [field for field in OutboxEvent._meta.concrete_fields if field.db_default is NOT_PROVIDED]
    defaults = {field.attname: field.get_default() for field in fields if field.attname not in rows[0]}
    json_fields = {field.attname for field in fields if isinstance(field, models.JSONField)}
    names = [field.attname for field in fields]
    columns = ", ".join(connection.ops.quote_name(field.column) for field in fields)
    with connection.cursor() as cursor, cursor.copy(f"COPY outbox_event ({columns}) FROM STDIN") as copy:
        for row in rows:
            values = []
            for name in names:
                value = row[name] if name in row else defaults[name]
                values.append(Jsonb(value) if name in json_fields else value)
            copy.write_row(values)


def outbox_publish_select(
    *,
    select_sql: str,
    params: Mapping[str, Any],
    with_sql: str = "",
    using: str = "default",
) -> int:
    """Write one event per row of a SELECT, inside the caller's transaction, in ONE statement.

    PostgreSQL only. `select_sql` must yield the columns `aggregatetype`, `aggregateid`, `type`
    and `payload` (jsonb); `with_sql` optionally prefixes common table expressions
    (`name AS (…), …`) the SELECT reads, e.g. a data-modifying `UPDATE … RETURNING`, so a batch
    of state changes and their events are one statement with no per-row work in Python (the
    order expiry sweep: a million events). `params` are psycopg named parameters (`%(name)s`)
    for both; names starting with `outbox_` are reserved. The outbox fills every other column
    exactly as `outbox_publish` does. Returns the number of events written.
    """
    connection = transaction.get_connection(using)
    if not connection.in_atomic_block:
        raise OutboxOutsideTransaction(
            "outbox_publish_select() must run inside the business transaction (transaction.atomic)."
        )
    if connection.vendor != "postgresql":
        raise NotSupportedError("outbox_publish_select() needs PostgreSQL; use outbox_publish_many().")
    from psycopg.types.json import Jsonb

    now = timezone.now()
    given = {
        # Time-ordered (UUIDv7 layout): a million ids appended to the primary key's right edge
        # instead of scattered over the whole index.
        "id": "encode(set_bit(set_bit(overlay(uuid_send(gen_random_uuid()) placing "
        "substring(int8send(floor(extract(epoch from clock_timestamp()) * 1000)::bigint) from 3) "
        "from 1 for 6), 52, 1), 53, 1), 'hex')::uuid",
        "aggregatetype": "e.aggregatetype",
        "aggregateid": "e.aggregateid",
        "type": "e.type",
        "payload": "e.payload",
        "headers": "%(outbox_headers)s",
        "available_at": "%(outbox_now)s",
        "created_at": "%(outbox_now)s",
    }
    values = {
        "outbox_headers": Jsonb(_event_headers()),
        "outbox_now": now,
    }
    columns, expressions = [], []
    for field in OutboxEvent._meta.concrete_fields:
        if field.db_default is not NOT_PROVIDED:
            continue  # filled by the database (sequence)
        columns.append(connection.ops.quote_name(field.column))
        if field.attname in given:
            expressions.append(given[field.attname])
        else:
            values[f"outbox_default_{field.attname}"] = field.get_db_prep_save(
                field.get_default(), connection
            )
            expressions.append(f"%(outbox_default_{field.attname})s")
    # Only the caller's own SQL text and model metadata are interpolated; values are parameters.
    prefix = f"WITH {with_sql} " if with_sql else ""
    table = OutboxEvent._meta.db_table
    sql = f"{prefix}INSERT INTO {table} ({', '.join(columns)}) SELECT {', '.join(expressions)} FROM ({select_sql}) AS e"  # noqa: S608, E501
    with connection.cursor() as cursor:
        cursor.execute(sql, {**params, **values})
        written = cursor.rowcount
    if written:
        _nudge_relay_on_commit(using)
    return written


def outbox_replay(
    *,
    ids: Iterable[str] | None = None,
    dead: bool = False,
    aggregate: tuple[str, str] | None = None,
) -> int:
    """Send events again: reset the chosen ones to `pending` with fresh attempts.

    Chosen = the given ids, and/or every dead event (`dead`), and/or every event of one
    aggregate (`aggregate=(type, id)`). Consumers dedupe by event id, so re-sending a published
    event is harmless. Returns the number of events reset.
    """
    from django.db.models import Q

    chosen = Q(pk__in=[])
    if ids:
        chosen |= Q(id__in=list(ids))
    if dead:
        chosen |= Q(status=OutboxEvent.Status.DEAD)
    if aggregate:
        chosen |= Q(aggregatetype=aggregate[0], aggregateid=aggregate[1])
    with transaction.atomic():
        count = OutboxEvent.objects.filter(chosen).update(
            status=OutboxEvent.Status.PENDING,
            attempts=0,
            available_at=timezone.now(),
            locked_until=None,
            published_at=None,
        )
        if count:
            transaction.on_commit(_nudge_relay)
    return count


def outbox_purge_published(
    *, older_than: timedelta | None = None, batch_size: int = 5000, dry_run: bool = False
) -> int:
    """Delete published events past the retention window, in batches (short locks, any size);
    `dry_run`: only count them."""
    from django.conf import settings

    if older_than is None:
        older_than = timedelta(days=settings.OUTBOX_RETENTION_DAYS)
    cutoff = timezone.now() - older_than
    if dry_run:
        return OutboxEvent.objects.filter(
            status=OutboxEvent.Status.PUBLISHED, published_at__lt=cutoff
        ).count()
    deleted = 0
    while True:
        ids = list(
            OutboxEvent.objects.filter(
                status=OutboxEvent.Status.PUBLISHED, published_at__lt=cutoff
            ).values_list("id", flat=True)[:batch_size]
        )
        if not ids:
            return deleted
        deleted += OutboxEvent.objects.filter(id__in=ids, status=OutboxEvent.Status.PUBLISHED).delete()[0]
