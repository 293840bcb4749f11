"""Idempotency for gateway routes: the gateway side, calling the `idempotency` services (which
never import the gateway).

Routes with `idempotency = optional | required` get it for unsafe methods. The upstream call cannot
share a transaction with the record, so the record is claimed (committed) before the call and
completed after it; a gateway process dying in between leaves a `processing` record that a retry
takes over once its lock expires (route timeout + margin, at least IDEMPOTENCY_LOCK_TIMEOUT_SECONDS)
and executes again.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable

from django.conf import settings
from django.db import DatabaseError

from common.errors import ApplicationError
from gateway.models import SAFE_METHODS
from gateway.responses import GatewayResponse, error_response
from gateway.services.db_pool import db_submit, in_db_shielded
from gateway.types import Identity, ResolvedRoute
from idempotency.cache import StoredResponse
from idempotency.errors import IdempotencyKeyMissing
from idempotency.services import (
    ANONYMOUS_SCOPE,
    REPLAYED_HEADER,
    Claim,
    IdempotentRequest,
    Replay,
    idempotency_begin,
    idempotency_complete,
    idempotency_fail,
    idempotency_key_parse,
    idempotency_request_hash,
    idempotency_scope,
    idempotency_status_is_final,
)

logger = logging.getLogger(__name__)

LOCK_MARGIN_SECONDS = 5


def _replay_answer(stored: StoredResponse) -> GatewayResponse:
    """The stored answer as `idempotency_replay_response` gives it: status, body, content type,
    Location, Content-Length and `Idempotent-Replayed: true` (the body byte for byte)."""
    headers: list[tuple[str, str]] = []
    if stored.content_type:
        headers.append(("Content-Type", stored.content_type))
    if stored.location:
        headers.append(("Location", stored.location))
    headers += [("Content-Length", str(len(stored.body))), (REPLAYED_HEADER, "true")]
    return GatewayResponse(status=stored.status, headers=headers, body=stored.body)


async def _capture(response: GatewayResponse) -> StoredResponse:
    """What to store of `response` (a stream is buffered up to IDEMPOTENCY_MAX_RESPONSE_BYTES;
    beyond that the client gets the buffered part and the rest, and nothing is replayable)."""
    limit = settings.IDEMPOTENCY_MAX_RESPONSE_BYTES
    if response.stream is not None:
        chunks: list[bytes] = []
        size = 0
        stream = response.stream
        async for chunk in stream:
            chunks.append(chunk)
            size += len(chunk)
            if size > limit:
                break
        if size > limit:
            response.stream = _chained(chunks, stream)
            body, stored = b"", False
        else:
            body, stored = b"".join(chunks), True
            response.stream, response.body = None, body
    else:
        body = response.body or b""
        stored = len(body) <= limit
        if not stored:
            body = b""
    return StoredResponse(
        status=response.status,
        body=body,
        content_type=response.header("Content-Type") or "",
        location=response.header("Location") or "",
        stored=stored,
    )


async def _chained(first: list[bytes], rest: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    for chunk in first:
        yield chunk
    async for chunk in rest:
        yield chunk


async def _begin(fingerprint: IdempotentRequest, lock_timeout: float) -> Claim | Replay:
    """`idempotency_begin` in the pool. Cancelled meanwhile (the client went away), a claim the
    thread still takes is released at once instead of staying `processing` until its lock ends."""
    future = db_submit(
        idempotency_begin, request=fingerprint, entry="gateway", lock_timeout_seconds=lock_timeout
    )
    try:
        return await asyncio.shield(future)
    except asyncio.CancelledError:

        def release(done: asyncio.Future) -> None:
            if not done.cancelled() and done.exception() is None and isinstance(done.result(), Claim):
                db_submit(idempotency_fail, claim=done.result())

        future.add_done_callback(release)
        raise


async def gateway_idempotency_async(
    *,
    route: ResolvedRoute,
    identity: Identity | None,
    method: str,
    path: str,
    query: bytes,
    key_header: str | None,
    body: bytes,
    execute: Callable[[], Awaitable[GatewayResponse]],
) -> GatewayResponse:
    """`execute` (the proxy call) under the route's idempotency policy: a replay, the
    upstream's answer, or a problem (400, 409, 422).

    The claim is released (`failed`) whenever no final answer comes back: an upstream error, a
    timeout, the client going away (the task is cancelled), a body that broke off; it is never
    completed with a partial answer.
    """
    if route.idempotency not in ("optional", "required") or method in SAFE_METHODS:
        return await execute()
    try:
        key = idempotency_key_parse(header=key_header)
        if key is None:
            if route.idempotency == "required":
                raise IdempotencyKeyMissing()
            return await execute()
        scope = (
            idempotency_scope(user_id=identity.user_id, tenant_id=identity.tenant_id)
            if identity is not None
            else ANONYMOUS_SCOPE
        )
        fingerprint = IdempotentRequest(
            scope=scope,
            key=key,
            method=method,
            path=path,
            request_hash=idempotency_request_hash(method=method, path=path, query=query, body=body),
        )
        lock_timeout = max(
            settings.IDEMPOTENCY_LOCK_TIMEOUT_SECONDS, route.timeout_ms / 1000 + LOCK_MARGIN_SECONDS
        )
        outcome = await _begin(fingerprint, lock_timeout)
    except ApplicationError as error:
        return error_response(error)
    if isinstance(outcome, Replay):
        return _replay_answer(outcome.response)

    try:
        response = await execute()
    except BaseException:
        await in_db_shielded(idempotency_fail, claim=outcome)
        raise
    try:
        stored = await _capture(response)
    except BaseException:  # the upstream broke off (or the client left) while we buffered
        await in_db_shielded(idempotency_fail, claim=outcome)
        await response.close()
        raise
    try:
        if idempotency_status_is_final(status=stored.status):
            await in_db_shielded(idempotency_complete, claim=outcome, response=stored)
        else:
            await in_db_shielded(idempotency_fail, claim=outcome)
    except DatabaseError:
        logger.exception("idempotency: could not record the outcome for key %r", outcome.request.key)
    return response
