"""Idempotency-Key handling shared by the DRF decorator and the gateway's proxy path.

Life of a key: `idempotency_begin` either claims the (scope, key) record — one atomic
`INSERT … ON CONFLICT DO NOTHING`, or one conditional `UPDATE` taking over a failed, stale or
expired record — or answers from the stored response (replay), or refuses (key reused for another
request, or still in progress). The executor then calls `idempotency_complete` or
`idempotency_fail`, both fenced by the claim's lock token so a request whose record was taken over
can never overwrite the newer outcome.
"""

from __future__ import annotations

import hashlib
import itertools
import logging
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from urllib.parse import quote

from django.conf import settings
from django.db import connection, transaction
from django.db.models import Q
from django.http import HttpResponse, HttpResponseBase
from django.utils import timezone

from idempotency.cache import CachedRecord, StoredResponse, cached_record_get, cached_record_put
from idempotency.errors import (
    IdempotencyInProgress,
    IdempotencyKeyInvalid,
    IdempotencyKeyReused,
    IdempotencyResponseUnavailable,
)
from idempotency.metrics import (
    IDEMPOTENCY_CONFLICTS,
    IDEMPOTENCY_IN_PROGRESS,
    IDEMPOTENCY_OUTCOMES,
    IDEMPOTENCY_PURGED,
    IDEMPOTENCY_RECORDS_CREATED,
    IDEMPOTENCY_REPLAYS,
)
from idempotency.models import IdempotencyRecord
from idempotency.selectors import idempotency_record_expired, idempotency_record_state_get

logger = logging.getLogger(__name__)

HEADER = "Idempotency-Key"
META_HEADER = "HTTP_IDEMPOTENCY_KEY"
REPLAYED_HEADER = "Idempotent-Replayed"
ANONYMOUS_SCOPE = "anonymous"
MAX_KEY_LENGTH = 255
RETRY_AFTER_SECONDS = 1  # a request holding a key usually finishes well within a second

# Responses that are not the request's final answer: the record is released (`failed`) so that a
# retry executes again. 5xx, 408, 425 and 429 say "try again"; 401 and 403 depend on the
# credential, which is not part of the request hash, so a retry with a fresh token must run.
# Every other status (2xx, 3xx, other 4xx such as 400, 404, 409, 422) is stored and replayed.
RELEASED_STATUSES = frozenset({401, 403, 408, 425, 429})

Status = IdempotencyRecord.Status


@dataclass(frozen=True, slots=True)
class IdempotentRequest:
    scope: str
    key: str
    method: str
    path: str
    request_hash: str


@dataclass(frozen=True, slots=True)
class Claim:
    """This request owns the record and must complete or fail it."""

    request: IdempotentRequest
    lock_token: uuid.UUID
    expires_at: datetime
    entry: str


@dataclass(frozen=True, slots=True)
class Replay:
    response: StoredResponse
    source: str  # local, redis, database


# --- request parsing --------------------------------------------------------------------------


def _printable(text: str) -> bool:
    return all(" " <= char <= "~" for char in text)


def idempotency_key_parse(*, header: str | None) -> str | None:
    """The key from an `Idempotency-Key` header value, None when absent.

    Accepts a bare value or an RFC 8941 sf-string (`"abc"`, with `\\"` and `\\\\` escapes); the key
    is 1–255 printable ASCII characters. Raises IdempotencyKeyInvalid otherwise.
    """
    if header is None:
        return None
    value = header.strip(" \t")
    if value.startswith('"'):
        value = _sf_string_parse(value)
    if not value:
        raise IdempotencyKeyInvalid("Idempotency-Key must not be empty.")
    if len(value) > MAX_KEY_LENGTH:
        raise IdempotencyKeyInvalid(f"Idempotency-Key must be at most {MAX_KEY_LENGTH} characters.")
    if not _printable(value):
        raise IdempotencyKeyInvalid("Idempotency-Key must be printable ASCII characters.")
    return value


def _sf_string_parse(value: str) -> str:
    if len(value) < 2 or not value.endswith('"'):
        raise IdempotencyKeyInvalid("Idempotency-Key: unterminated quoted string.")
    inner, chars, index = value[1:-1], [], 0
    while index < len(inner):
        char = inner[index]
        if char == "\\":
            if index + 1 >= len(inner) or inner[index + 1] not in '"\\':
                raise IdempotencyKeyInvalid("Idempotency-Key: invalid escape in quoted string.")
            chars.append(inner[index + 1])
            index += 2
            continue
        if char == '"':
            raise IdempotencyKeyInvalid("Idempotency-Key: unescaped quote inside quoted string.")
        chars.append(char)
        index += 1
    return "".join(chars)


def idempotency_scope(*, user_id: str | None, tenant_id: str | None = None) -> str:
    """`user:{user_id}|tenant:{tenant_id}` (each part escaped so no two identities collide)."""
    if not user_id:
        return ANONYMOUS_SCOPE
    scope = f"user:{quote(str(user_id), safe='')}|tenant:{quote(str(tenant_id or ''), safe='')}"
    if len(scope) > 512:
        scope = "sha256:" + hashlib.sha256(scope.encode()).hexdigest()
    return scope


def idempotency_request_hash(*, method: str, path: str, query: bytes, body: bytes) -> str:
    """SHA-256 over method, path, query and body, each length-prefixed (unambiguous framing)."""
    digest = hashlib.sha256()
    for part in (method.upper().encode(), path.encode("utf-8", "surrogateescape"), query, body):
        digest.update(len(part).to_bytes(8, "big"))
        digest.update(part)
    return digest.hexdigest()


# --- the claim --------------------------------------------------------------------------------

# The claim: one statement. `_async` makes this statement's own (autocommit) transaction commit
# without waiting for the WAL flush — see `_async_commit`.
_INSERT_SQL = """
INSERT INTO idempotency_record
    ("scope", "key", "method", "path", "request_hash", "status", "lock_token", "locked_at",
     "locked_until", "response_content_type", "response_location", "response_stored",
     "created_at", "expires_at")
SELECT %s, %s, %s, %s, %s, %s, %s, %s, %s, '', '', %s, %s, %s {async_from}
WHERE true
ON CONFLICT ("key", "scope") DO NOTHING
RETURNING "id"
"""
_ASYNC_FROM = "FROM (SELECT set_config('synchronous_commit', 'off', true)) AS _async"
_COMPLETE_SQL = """
UPDATE idempotency_record SET
    "status" = %s, "response_status" = %s, "response_body" = %s, "response_content_type" = %s,
    "response_location" = %s, "response_stored" = %s, "completed_at" = %s, "locked_until" = NULL
{async_from}
WHERE "scope" = %s AND "key" = %s AND "lock_token" = %s AND "status" = %s
"""
_LOCK_TOKEN_FIELD = IdempotencyRecord._meta.get_field("lock_token")


def _async_commit() -> bool:
    """Whether a record-only write may commit without waiting for the WAL flush.

    A durable commit costs more than the rest of the idempotency layer together. Visibility and
    atomicity do not change (the claim is still one atomic statement, seen by every other session
    once it returns); only a PostgreSQL crash within ~0.6 s of the commit (3 x wal_writer_delay)
    can lose the write, which at worst lets one retry execute again. The setting is scoped to the
    one statement's transaction (`set_config(..., true)`), never the session. Inside a caller's
    transaction (the DRF decorator's completion) it is never used: that commit carries the
    handler's work and stays durable. Only used when IDEMPOTENCY_DURABLE_COMMIT = false.
    """
    return (
        connection.vendor == "postgresql"
        and not connection.in_atomic_block
        and not settings.IDEMPOTENCY_DURABLE_COMMIT
    )


def idempotency_begin(
    *,
    request: IdempotentRequest,
    entry: str,
    lock_timeout_seconds: float | None = None,
) -> Claim | Replay:
    """Claim the key for this request, or return the stored response to replay.

    Raises IdempotencyKeyReused (different request under the same key), IdempotencyInProgress
    (the key is held by a running request) or IdempotencyResponseUnavailable.
    """
    cached = cached_record_get(scope=request.scope, key=request.key)
    if cached is not None:
        record, source = cached
        return _answer_completed(request, record.request_hash, record.response, source, entry)

    now = timezone.now()
    lock_timeout = lock_timeout_seconds or settings.IDEMPOTENCY_LOCK_TIMEOUT_SECONDS
    token = uuid.uuid4()
    locked_until = now + timedelta(seconds=lock_timeout)
    expires_at = now + timedelta(hours=settings.IDEMPOTENCY_TTL_HOURS)
    claim = Claim(request=request, lock_token=token, expires_at=expires_at, entry=entry)

    ops = connection.ops
    with connection.cursor() as cursor:
        cursor.execute(
            _INSERT_SQL.format(async_from=_ASYNC_FROM if _async_commit() else ""),
            [
                request.scope,
                request.key,
                request.method,
                request.path[:2048],
                request.request_hash,
                Status.PROCESSING.value,
                _LOCK_TOKEN_FIELD.get_db_prep_value(token, connection),
                ops.adapt_datetimefield_value(now),
                ops.adapt_datetimefield_value(locked_until),
                True,
                ops.adapt_datetimefield_value(now),
                ops.adapt_datetimefield_value(expires_at),
            ],
        )
        inserted = cursor.fetchone() is not None
    if inserted:
        IDEMPOTENCY_RECORDS_CREATED.labels(entry, "new").inc()
        return claim

    # The key exists: answer from its state, unless it no longer binds anyone — expired (any
    # request may reuse it), or for this same request failed or processing past its lock (its
    # executor died). Then one conditional UPDATE takes it over; concurrent takeovers serialise
    # on the row and exactly one wins. No loop: a lost race is answered "in progress".
    row = idempotency_record_state_get(scope=request.scope, key=request.key)
    if row is not None and row["expires_at"] >= now and row["request_hash"] != request.request_hash:
        IDEMPOTENCY_CONFLICTS.labels(entry).inc()
        raise IdempotencyKeyReused()
    if row is not None and row["expires_at"] >= now and row["status"] == Status.COMPLETED:
        stored = StoredResponse(
            status=row["response_status"],
            body=bytes(row["response_body"] or b""),
            content_type=row["response_content_type"],
            location=row["response_location"],
            stored=row["response_stored"],
        )
        cached_record_put(
            scope=request.scope,
            key=request.key,
            record=CachedRecord(request.request_hash, stored, row["expires_at"]),
        )
        return _answer_completed(request, row["request_hash"], stored, "database", entry)
    if (
        row is not None
        and _looks_free(row, now)
        and _takeover(request=request, now=now, locked_until=locked_until, claim=claim)
    ):
        IDEMPOTENCY_RECORDS_CREATED.labels(entry, "takeover").inc()
        return claim
    # processing within its lock, or a race lost to another executor (or to the purge)
    IDEMPOTENCY_IN_PROGRESS.labels(entry).inc()
    raise IdempotencyInProgress(retry_after=RETRY_AFTER_SECONDS)


def _looks_free(row: dict, now: datetime) -> bool:
    """Whether the row may be taken over (the UPDATE re-checks this atomically)."""
    if row["expires_at"] < now or row["status"] == Status.FAILED:
        return True
    return row["status"] == Status.PROCESSING and (row["locked_until"] is None or row["locked_until"] < now)


def _takeover(*, request: IdempotentRequest, now: datetime, locked_until: datetime, claim: Claim) -> bool:
    updated = (
        IdempotencyRecord.objects.filter(scope=request.scope, key=request.key)
        .filter(
            Q(expires_at__lt=now)
            | (
                Q(request_hash=request.request_hash)
                & (Q(status=Status.FAILED) | Q(status=Status.PROCESSING, locked_until__lt=now))
            )
        )
        .update(
            method=request.method,
            path=request.path[:2048],
            request_hash=request.request_hash,
            status=Status.PROCESSING,
            lock_token=claim.lock_token,
            locked_at=now,
            locked_until=locked_until,
            response_status=None,
            response_body=None,
            response_content_type="",
            response_location="",
            response_stored=True,
            created_at=now,
            completed_at=None,
            expires_at=claim.expires_at,
        )
    )
    return bool(updated)


def _answer_completed(
    request: IdempotentRequest, request_hash: str, stored: StoredResponse, source: str, entry: str
) -> Replay:
    if request_hash != request.request_hash:
        IDEMPOTENCY_CONFLICTS.labels(entry).inc()
        raise IdempotencyKeyReused()
    if not stored.stored:
        raise IdempotencyResponseUnavailable()
    IDEMPOTENCY_REPLAYS.labels(entry, source).inc()
    return Replay(response=stored, source=source)


# --- outcome ----------------------------------------------------------------------------------


def idempotency_status_is_final(*, status: int) -> bool:
    """Whether a response with this status is stored and replayed (else the key is released)."""
    return status < 500 and status not in RELEASED_STATUSES


def idempotency_complete(*, claim: Claim, response: StoredResponse) -> bool:
    """Store the response; False when the claim was lost (taken over after its lock timeout).

    Runs in the caller's transaction when there is one (the DRF decorator commits the handler's
    work and this row together); the caches are filled only once that commits.
    """
    request = claim.request
    body = response.body if response.stored else None
    completed_at = timezone.now()
    if _async_commit():
        with connection.cursor() as cursor:
            cursor.execute(
                _COMPLETE_SQL.format(async_from=_ASYNC_FROM),
                [
                    Status.COMPLETED.value,
                    response.status,
                    body,
                    response.content_type[:255],
                    response.location[:2048],
                    response.stored,
                    completed_at,
                    request.scope,
                    request.key,
                    claim.lock_token,
                    Status.PROCESSING.value,
                ],
            )
            updated = cursor.rowcount
    else:
        updated = IdempotencyRecord.objects.filter(
            scope=request.scope, key=request.key, lock_token=claim.lock_token, status=Status.PROCESSING
        ).update(
            status=Status.COMPLETED,
            response_status=response.status,
            response_body=body,
            response_content_type=response.content_type[:255],
            response_location=response.location[:2048],
            response_stored=response.stored,
            completed_at=completed_at,
            locked_until=None,
        )
    if not updated:
        IDEMPOTENCY_OUTCOMES.labels(claim.entry, "lock_lost").inc()
        logger.warning("idempotency: claim on key %r was taken over before completion", request.key)
        return False
    IDEMPOTENCY_OUTCOMES.labels(claim.entry, "completed").inc()
    if response.stored:
        record = CachedRecord(request.request_hash, response, claim.expires_at)
        # This process's memory only: most keys are never retried, so Redis is filled on the
        # first replay read from the database instead of paying a round trip on every request.
        transaction.on_commit(
            lambda: cached_record_put(scope=request.scope, key=request.key, record=record, shared=False)
        )
    return True


def idempotency_fail(*, claim: Claim) -> bool:
    """Release the key (`failed`) so that a retry of the same request executes again."""
    request = claim.request
    updated = IdempotencyRecord.objects.filter(
        scope=request.scope, key=request.key, lock_token=claim.lock_token, status=Status.PROCESSING
    ).update(status=Status.FAILED, locked_until=None, completed_at=timezone.now())
    IDEMPOTENCY_OUTCOMES.labels(claim.entry, "failed" if updated else "lock_lost").inc()
    return bool(updated)


def idempotency_response_capture(
    *, response: HttpResponseBase, max_bytes: int | None = None
) -> tuple[HttpResponseBase, StoredResponse]:
    """What to store of `response`, and the response to send (a streamed one is buffered).

    A streaming body is read up to `max_bytes`: within it, the response is re-armed with the
    buffered bytes (headers untouched); beyond it, the client gets the buffered part followed by
    the rest of the stream (memory stays bounded) and the stored response is marked not replayable.
    """
    limit = settings.IDEMPOTENCY_MAX_RESPONSE_BYTES if max_bytes is None else max_bytes
    if response.streaming:
        chunks: list[bytes] = []
        size = 0
        iterator = iter(response.streaming_content)
        for chunk in iterator:
            chunks.append(chunk)
            size += len(chunk)
            if size > limit:
                break
        if size > limit:
            response.streaming_content = itertools.chain(chunks, iterator)
            body, stored = b"", False
        else:
            body, stored = b"".join(chunks), True
            response.streaming_content = [body] if body else []
    else:
        body = response.content
        stored = len(body) <= limit
        if not stored:
            body = b""
    return response, StoredResponse(
        status=response.status_code,
        body=body,
        content_type=response.get("Content-Type", "") if response.has_header("Content-Type") else "",
        location=response.get("Location", ""),
        stored=stored,
    )


def idempotency_replay_response(*, stored: StoredResponse) -> HttpResponse:
    """The stored status, body, content type and Location, plus `Idempotent-Replayed: true`."""
    response = HttpResponse(stored.body, status=stored.status)
    if stored.content_type:
        response["Content-Type"] = stored.content_type
    else:
        del response["Content-Type"]
    if stored.location:
        response["Location"] = stored.location
    response["Content-Length"] = str(len(stored.body))
    response[REPLAYED_HEADER] = "true"
    return response


# --- retention --------------------------------------------------------------------------------


def idempotency_purge_expired(
    *,
    batch_size: int = 1000,
    dry_run: bool = False,
    now: datetime | None = None,
    progress: Callable[[int], None] | None = None,
) -> int:
    """Delete records whose `expires_at < now` in batches; returns how many (would be) deleted."""
    now = now or timezone.now()
    expired = idempotency_record_expired(now=now)
    if dry_run:
        return expired.count()
    total = 0
    while True:
        ids = list(expired.order_by("id").values_list("id", flat=True)[:batch_size])
        if not ids:
            break
        # Re-check expiry in the DELETE: a record taken over since the SELECT is live again.
        deleted, _ = IdempotencyRecord.objects.filter(id__in=ids, expires_at__lt=now).delete()
        total += deleted
        IDEMPOTENCY_PURGED.inc(deleted)
        if progress is not None:
            progress(total)
        if len(ids) < batch_size:
            break
    return total
