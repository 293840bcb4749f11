"""The outbox relay: claim with a lease, publish with no transaction open, mark after confirm.

Order per aggregate. An event is a *head* when no earlier event (lower `sequence`) of its
aggregate is still pending or dead. A relay claims heads with `FOR UPDATE SKIP LOCKED` and
commits a lease (`locked_until`) on them, then the pending events that follow those heads.
While a head is leased no other relay can claim anything of that aggregate: its head is leased
and its later events are not heads. So two relays never hold events of one aggregate at the
same time (except after a lease expired, when the old holder is presumed dead; it may then
still publish, which is the at-least-once duplicate consumers dedupe by event id).
The NOT EXISTS is evaluated on the statement's snapshot, where "published" can only be seen once
the publish really was confirmed, so a stale snapshot can only make a relay claim less.

Publishing goes in waves: wave k carries the k-th claimed event of every aggregate, so an
aggregate's next event is sent only after the previous one was confirmed; a failure stops that
aggregate for this batch and releases the rest of its claim.
"""

from __future__ import annotations

import json
import logging
import random
import time
from collections import defaultdict, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from uuid import UUID

from django.conf import settings
from django.db import OperationalError, connection, transaction
from django.db.models import Exists, OuterRef, Q
from django.utils import timezone

from common import telemetry
from outbox import metrics
from outbox.models import OutboxDeliveryAttempt, OutboxEvent
from outbox.publishers import Failures, Publisher, RelayEvent, publisher_from_settings

logger = logging.getLogger(__name__)

BACKOFF_BASE_SECONDS = 2.0
BACKOFF_MAX_SECONDS = 3600.0
_COLUMNS = (
    "id",
    "sequence",
    "aggregatetype",
    "aggregateid",
    "type",
    "payload",
    "headers",
    "created_at",
    "attempts",
)


@dataclass
class BatchResult:
    claimed: int = 0
    published: int = 0
    failed: int = 0
    dead: int = 0
    released: int = 0


@dataclass
class RelayHooks:
    """Fault-injection points for tests (a relay paused here can be SIGKILLed)."""

    after_claim: Callable[[list[RelayEvent]], None] | None = None
    after_publish: Callable[[list[UUID]], None] | None = None


@dataclass
class DrainResult:
    batches: int = 0
    published: int = 0
    failed: int = 0
    dead: int = 0
    seconds: float = 0.0
    results: list[BatchResult] = field(default_factory=list)


def outbox_backoff_delay(*, attempts: int) -> float:
    """Seconds before retry number `attempts`: base·2^(attempts-1), capped, with 'equal jitter'.

    The jitter keeps the delay within [d/2, d], so successive retries never move earlier.
    """
    delay = min(BACKOFF_MAX_SECONDS, BACKOFF_BASE_SECONDS * 2 ** max(0, attempts - 1))
    return delay / 2 + random.uniform(0, delay / 2)


# Heads among the first `window` claimable pending events, in sequence order: stops as soon as
# `limit` heads are found (many aggregates), and never probes more than `window` rows.
_HEADS_SQL = """
WITH heads AS (
    SELECT e.ctid FROM outbox_event e
    WHERE e.status = 'pending' AND e.available_at <= %(now)s
      AND (e.locked_until IS NULL OR e.locked_until < %(now)s)
      AND e.sequence <= COALESCE((
          SELECT sequence FROM outbox_event
          WHERE status = 'pending' AND available_at <= %(now)s
            AND (locked_until IS NULL OR locked_until < %(now)s)
          ORDER BY sequence OFFSET %(window)s LIMIT 1), 9223372036854775807)
      AND NOT EXISTS (
          SELECT 1 FROM outbox_event p
          WHERE p.aggregatetype = e.aggregatetype AND p.aggregateid = e.aggregateid
            AND p.status IN ('pending', 'dead') AND p.sequence < e.sequence)
    ORDER BY e.sequence
    LIMIT %(limit)s
    FOR UPDATE OF e SKIP LOCKED
)
UPDATE outbox_event o SET locked_until = %(lease)s
WHERE o.ctid = ANY(ARRAY(SELECT ctid FROM heads))
RETURNING {columns}
"""
# Fallback when the window held too few heads (few aggregates with deep queues, or a dead
# aggregate's held backlog in front): walk the unpublished index one aggregate at a time (a loose
# index scan) and take each aggregate's first unpublished event. The conditions are repeated on
# `e` so that FOR UPDATE re-checks them on the row's latest version.
_HEADS_BY_AGGREGATE_SQL = """
WITH RECURSIVE firsts AS (
    (SELECT aggregatetype, aggregateid, id FROM outbox_event
     WHERE status IN ('pending', 'dead')
     ORDER BY aggregatetype, aggregateid, sequence LIMIT 1)
    UNION ALL
    SELECT n.aggregatetype, n.aggregateid, n.id FROM firsts f, LATERAL (
        SELECT aggregatetype, aggregateid, id FROM outbox_event
        WHERE status IN ('pending', 'dead')
          AND (aggregatetype, aggregateid) > (f.aggregatetype, f.aggregateid)
        ORDER BY aggregatetype, aggregateid, sequence LIMIT 1) n
), heads AS (
    SELECT e.ctid FROM outbox_event e JOIN firsts f ON f.id = e.id
    WHERE e.status = 'pending' AND e.available_at <= %(now)s
      AND (e.locked_until IS NULL OR e.locked_until < %(now)s)
    ORDER BY e.sequence
    LIMIT %(limit)s
    FOR UPDATE OF e SKIP LOCKED
)
UPDATE outbox_event o SET locked_until = %(lease)s
WHERE o.ctid = ANY(ARRAY(SELECT ctid FROM heads))
RETURNING {columns}
"""
# Followers are not heads, so no other live relay claims them: wait for a row lock (a late mark
# by a holder whose lease expired) rather than skip it and leave a gap in the aggregate's order.
# Taking the first `limit` by sequence keeps each aggregate's share a contiguous prefix.
_FOLLOWERS_SQL = """
WITH followers AS (
    SELECT e.ctid FROM outbox_event e
    WHERE e.id IN (
        SELECT f.id
        FROM unnest(%(types)s::text[], %(ids)s::text[], %(sequences)s::bigint[]) AS h(t, a, s),
        LATERAL (
            SELECT id FROM outbox_event
            WHERE aggregatetype = h.t AND aggregateid = h.a
              AND status = 'pending' AND sequence > h.s
            ORDER BY sequence LIMIT %(per_aggregate)s) f)
      AND e.status = 'pending'
    ORDER BY e.sequence
    LIMIT %(limit)s
    FOR UPDATE OF e
)
UPDATE outbox_event o SET locked_until = %(lease)s
WHERE o.ctid = ANY(ARRAY(SELECT ctid FROM followers))
RETURNING {columns}
"""
# The UPDATEs find the locked rows by ctid (a TID scan straight to the heap tuple) rather than
# by id: with the table's update churn the pkey lookup of 500 ids cost more than the claim.
# Safe: the row lock taken in the CTE keeps that tuple version in place until the statement ends.
_RETURNING = ", ".join(f"o.{column}" for column in _COLUMNS) + ", o.ctid::text"


def _row_to_event(row: tuple) -> RelayEvent:  # type: ignore[type-arg]
    event_id, sequence, aggregatetype, aggregateid, type_, payload, headers, created_at, attempts = row[:9]
    ctid = row[9] if len(row) > 9 else None
    if not isinstance(payload, str):  # ORM path: decoded JSON; raw PostgreSQL path: JSON text
        payload = json.dumps(payload, separators=(",", ":"))
    if isinstance(headers, str):
        headers = json.loads(headers)
    return RelayEvent(
        event_id,
        sequence,
        aggregatetype,
        aggregateid,
        type_,
        payload,
        headers or {},
        created_at,
        attempts,
        ctid,
    )


def _claim_postgresql(now: datetime, lease: datetime, batch_size: int) -> list[tuple]:  # type: ignore[type-arg]
    params = {"now": now, "lease": lease, "limit": batch_size, "window": batch_size * 4}
    with connection.cursor() as cursor:
        cursor.execute(_HEADS_SQL.format(columns=_RETURNING), params)
        rows = cursor.fetchall()
        if len(rows) < batch_size:
            # Heads claimed above now carry this transaction's lease, so they are not re-taken.
            cursor.execute(
                _HEADS_BY_AGGREGATE_SQL.format(columns=_RETURNING),
                {**params, "limit": batch_size - len(rows)},
            )
            rows += cursor.fetchall()
        room = batch_size - len(rows)
        if rows and room > 0:
            cursor.execute(
                _FOLLOWERS_SQL.format(columns=_RETURNING),
                {
                    "types": [row[2] for row in rows],
                    "ids": [row[3] for row in rows],
                    "sequences": [row[1] for row in rows],
                    "lease": lease,
                    "limit": room,
                    "per_aggregate": -(-room // len(rows)),
                },
            )
            rows += cursor.fetchall()
    return rows


def _claim_portable(now: datetime, lease: datetime, batch_size: int) -> list[tuple]:  # type: ignore[type-arg]
    """Other databases (SQLite): the same rule with the ORM. SQLite has one writer at a time, so
    a second relay's lease write fails (database locked) and it retries next round."""
    earlier_unpublished = OutboxEvent.objects.filter(
        aggregatetype=OuterRef("aggregatetype"),
        aggregateid=OuterRef("aggregateid"),
        sequence__lt=OuterRef("sequence"),
        status__in=[OutboxEvent.Status.PENDING, OutboxEvent.Status.DEAD],
    )
    heads = list(
        OutboxEvent.objects.filter(status=OutboxEvent.Status.PENDING, available_at__lte=now)
        .filter(Q(locked_until__isnull=True) | Q(locked_until__lt=now))
        .filter(~Exists(earlier_unpublished))
        .order_by("sequence")
        .select_for_update(skip_locked=True)
        .values_list(*_COLUMNS)[:batch_size]
    )
    rows = heads
    room = batch_size - len(heads)
    if heads and room > 0:
        after_heads = Q()
        for head in heads:
            after_heads |= Q(aggregatetype=head[2], aggregateid=head[3], sequence__gt=head[1])
        rows = heads + list(
            OutboxEvent.objects.filter(after_heads, status=OutboxEvent.Status.PENDING)
            .order_by("sequence")
            .select_for_update()
            .values_list(*_COLUMNS)[:room]
        )
    if rows:
        OutboxEvent.objects.filter(id__in=[row[0] for row in rows]).update(locked_until=lease)
    return rows


def outbox_claim(*, batch_size: int, lease_seconds: int | None = None) -> list[RelayEvent]:
    """Claim up to `batch_size` events (heads plus their followers) and commit the lease."""
    now = timezone.now()
    lease = now + timedelta(seconds=lease_seconds or settings.OUTBOX_LEASE_SECONDS)
    try:
        if connection.vendor == "postgresql":
            # Each statement commits its own lease (autocommit): no BEGIN/COMMIT round trips.
            # The followers need no lock held from the heads statement: once the heads' lease is
            # committed, no other relay can claim anything of those aggregates.
            rows = _claim_postgresql(now, lease, batch_size)
        else:
            with transaction.atomic():
                rows = _claim_portable(now, lease, batch_size)
    except OperationalError as exc:  # deadlock, lock timeout, SQLite busy: next round
        logger.warning("outbox claim failed, retrying next round: %s", exc)
        return []
    events = [_row_to_event(row) for row in rows]
    events.sort(key=lambda event: event.sequence)
    return events


def _update_pending(ids: list[UUID], **values: object) -> int:
    """UPDATE the still-pending rows among `ids`, retried if PostgreSQL breaks a deadlock.

    A deadlock needs two relays writing the same rows, i.e. a lease that expired while its holder
    was still alive; the database picks a victim and the retry then goes through."""
    updated = 0
    for start in range(0, len(ids), 5000):
        chunk = ids[start : start + 5000]
        for attempt in range(3):
            try:  # one statement: atomic on its own, no BEGIN/COMMIT round trips
                updated += OutboxEvent.objects.filter(id__in=chunk, status=OutboxEvent.Status.PENDING).update(
                    **values
                )
                break
            except OperationalError:
                if attempt == 2:
                    raise
                time.sleep(0.05 * (attempt + 1))
    return updated


_MARK_BY_CTID_SQL = """
UPDATE outbox_event SET status = 'published', published_at = %(now)s, locked_until = NULL
WHERE ctid = ANY(%(ctids)s::tid[]) AND id = ANY(%(ids)s::uuid[]) AND status = 'pending'
RETURNING id
"""


def outbox_mark_published(*, ids: list[UUID], ctids: list[str | None] | None = None) -> int:
    """Confirmed by the publisher: published (also if the lease expired meanwhile: it was sent).

    On PostgreSQL the row versions the claim returned are marked by ctid (a TID scan; `id` is
    re-checked); rows updated since then (a lapsed lease) fall back to the lookup by id."""
    now = timezone.now()
    marked = 0
    remaining = ids
    if ctids and connection.vendor == "postgresql" and all(ctids):
        with connection.cursor() as cursor:
            cursor.execute(_MARK_BY_CTID_SQL, {"now": now, "ctids": ctids, "ids": ids})
            done = {row[0] for row in cursor.fetchall()}
        marked = len(done)
        remaining = [event_id for event_id in ids if event_id not in done]
    if remaining:
        marked += _update_pending(
            remaining, status=OutboxEvent.Status.PUBLISHED, published_at=now, locked_until=None
        )
    return marked


def outbox_mark_failed(*, failures: Failures, events: dict[UUID, RelayEvent]) -> int:
    """attempts + 1, last_error, back off; `dead` after OUTBOX_MAX_ATTEMPTS. Returns deaths.

    One UPDATE per (attempt number, error): a broker outage fails a whole wave at once, and its
    events then retry together (the jitter spreads relays and rounds, not one batch's rows)."""
    now = timezone.now()
    groups: dict[tuple[int, str], list[UUID]] = defaultdict(list)
    for event_id, reason in failures.items():
        groups[(events[event_id].attempts + 1, reason[:2000])].append(event_id)
    dead = 0
    for (attempts, reason), ids in groups.items():
        is_dead = attempts >= settings.OUTBOX_MAX_ATTEMPTS
        dead += len(ids) if is_dead else 0
        _update_pending(
            ids,
            attempts=attempts,
            last_error=reason,
            locked_until=None,
            available_at=now + timedelta(seconds=outbox_backoff_delay(attempts=attempts)),
            status=OutboxEvent.Status.DEAD if is_dead else OutboxEvent.Status.PENDING,
        )
    return dead


def outbox_release(*, ids: list[UUID]) -> None:
    """Give back claimed events that were not attempted (an earlier one of their aggregate failed)."""
    _update_pending(ids, locked_until=None)


def outbox_relay_batch(
    *,
    publisher: Publisher | None = None,
    batch_size: int | None = None,
    hooks: RelayHooks | None = None,
) -> BatchResult:
    """One claim → publish → mark round. Idempotent; safe to run in several processes at once."""
    result, prefetched = _relay_round(
        publisher=publisher or publisher_from_settings(),
        batch_size=batch_size or settings.OUTBOX_BATCH_SIZE,
        hooks=hooks,
        events=None,
        prefetch=False,
    )
    return result


def _relay_round(
    *,
    publisher: Publisher,
    batch_size: int,
    hooks: RelayHooks | None,
    events: list[RelayEvent] | None,
    prefetch: bool,
) -> tuple[BatchResult, list[RelayEvent] | None]:
    """Relay `events` (or a fresh claim). With `prefetch`, the next batch is claimed while the
    broker confirms the last wave; it is safe to claim then, because every event of this batch
    is still pending and leased, so none of its aggregates can be claimed a second time."""
    if not events:  # an empty prefetch only meant "nothing claimable while that batch was out"
        events = outbox_claim(batch_size=batch_size)
    result = BatchResult(claimed=len(events))
    if not events:
        return result, None
    with telemetry.span(
        "outbox.relay_batch",
        kind="producer",
        attributes={"outbox.claimed": len(events), "outbox.publisher": type(publisher).__name__},
    ) as span:
        relayed = _relay_claimed(
            publisher=publisher, batch_size=batch_size, hooks=hooks, events=events, prefetch=prefetch
        )
        done = relayed[0]
        span.set_attribute("outbox.published", done.published)
        span.set_attribute("outbox.failed", done.failed)
        span.set_attribute("outbox.dead", done.dead)
        span.set_attribute("outbox.released", done.released)
        if done.failed:
            span.set_error(f"{done.failed} events failed to publish")
        return relayed


def _relay_claimed(
    *,
    publisher: Publisher,
    batch_size: int,
    hooks: RelayHooks | None,
    events: list[RelayEvent],
    prefetch: bool,
) -> tuple[BatchResult, list[RelayEvent] | None]:
    """Publish claimed `events` wave by wave (one event per aggregate per wave), then mark them."""
    result = BatchResult(claimed=len(events))
    if hooks and hooks.after_claim:
        hooks.after_claim(events)

    # No transaction is open from here until the marks: a slow broker holds no row locks.
    queues: dict[tuple[str, str], deque[RelayEvent]] = defaultdict(deque)
    for event in events:
        queues[(event.aggregatetype, event.aggregateid)].append(event)
    confirmed: list[UUID] = []
    failures: Failures = {}
    released: list[UUID] = []
    prefetched: list[RelayEvent] | None = None
    attempts: list[OutboxDeliveryAttempt] = []
    overlap = prefetch and hasattr(publisher, "send") and hasattr(publisher, "wait")
    # Stop starting waves well before the lease ends (a slow webhook receiver): past it another
    # relay may claim the same events and the two would interleave.
    wave_deadline = time.monotonic() + settings.OUTBOX_LEASE_SECONDS / 2
    while queues:
        if time.monotonic() > wave_deadline:
            released.extend(event.id for queue in queues.values() for event in queue)
            logger.warning("outbox: lease half spent, %d claimed events handed back", len(released))
            break
        wave = [queue.popleft() for queue in queues.values()]
        wave_started = time.monotonic()
        if overlap and all(not queue for queue in queues.values()):  # the last wave
            publisher.send(wave)  # type: ignore[attr-defined]
            prefetched = outbox_claim(batch_size=batch_size)
            wave_failures = publisher.wait()  # type: ignore[attr-defined]
        else:
            wave_failures = publisher.publish(wave)
        attempts.extend(_delivery_attempts(wave, wave_failures, started=wave_started))
        for event in wave:
            key = (event.aggregatetype, event.aggregateid)
            if event.id in wave_failures:
                failures[event.id] = wave_failures[event.id]
                released.extend(item.id for item in queues.pop(key))
            else:
                confirmed.append(event.id)
                if not queues[key]:
                    del queues[key]

    if hooks and hooks.after_publish:
        hooks.after_publish(confirmed)
    if confirmed:
        ctid_of = {event.id: event.ctid for event in events}
        result.published = outbox_mark_published(
            ids=confirmed, ctids=[ctid_of[event_id] for event_id in confirmed]
        )
        metrics.published_total.inc(len(confirmed))
    if failures:
        result.failed = len(failures)
        result.dead = outbox_mark_failed(failures=failures, events={e.id: e for e in events})
        metrics.publish_failures_total.inc(len(failures))
        logger.warning(
            "outbox: %d events failed to publish (%d now dead); first error: %s",
            len(failures),
            result.dead,
            next(iter(failures.values())),
        )
    if released:
        result.released = len(released)
        outbox_release(ids=released)
    if attempts:
        # After the marks: a lost INSERT here loses history, never a delivery state.
        OutboxDeliveryAttempt.objects.bulk_create(attempts)
    return result, prefetched


def _delivery_attempts(
    wave: list[RelayEvent], failures: Failures, *, started: float
) -> list[OutboxDeliveryAttempt]:
    """One attempt row per event of a published wave (its duration is the wave's)."""
    now = timezone.now()
    duration_ms = (time.monotonic() - started) * 1000
    return [
        OutboxDeliveryAttempt(
            event_id=event.id,
            attempt_number=event.attempts + 1,
            status=OutboxDeliveryAttempt.Status.FAILED
            if event.id in failures
            else OutboxDeliveryAttempt.Status.SUCCESS,
            error=failures.get(event.id, "")[:2000],
            duration_ms=duration_ms,
            created_at=now,
        )
        for event in wave
    ]


def outbox_relay_drain(
    *,
    publisher: Publisher | None = None,
    batch_size: int | None = None,
    max_seconds: float | None = None,
    hooks: RelayHooks | None = None,
    on_batch: Callable[[BatchResult, DrainResult], None] | None = None,
) -> DrainResult:
    """Relay batches until nothing is claimable (or `max_seconds` passed).

    Batches overlap: the next one is claimed while the broker confirms the previous one."""
    publisher = publisher or publisher_from_settings()
    batch_size = batch_size or settings.OUTBOX_BATCH_SIZE
    started = time.monotonic()
    total = DrainResult()
    prefetched: list[RelayEvent] | None = None
    try:
        while True:
            batch, prefetched = _relay_round(
                publisher=publisher,
                batch_size=batch_size,
                hooks=hooks,
                events=prefetched,
                prefetch=True,
            )
            if not batch.claimed:
                break
            total.batches += 1
            total.published += batch.published
            total.failed += batch.failed
            total.dead += batch.dead
            if on_batch:
                on_batch(batch, total)
            if max_seconds is not None and time.monotonic() - started >= max_seconds:
                break
    finally:
        if prefetched:  # claimed but not sent: hand back now rather than at lease expiry
            outbox_release(ids=[event.id for event in prefetched])
    total.seconds = time.monotonic() - started
    return total
