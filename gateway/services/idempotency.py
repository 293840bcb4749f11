"""Idempotency for gateway routes: the gateway side, calling the `idempotency` services (which
never import the gateway).

Routes with `idempotency = optional | required` get it for unsafe methods. The upstream call cannot
share a transaction with the record, so the record is claimed (committed) before the call and
completed after it; a gateway process dying in between leaves a `processing` record that a retry
takes over once its lock expires (route timeout + margin, at least IDEMPOTENCY_LOCK_TIMEOUT_SECONDS)
and executes again.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from django.conf import settings
from django.db import DatabaseError
from django.http import HttpRequest, HttpResponseBase

from common.errors import ApplicationError
from gateway.models import SAFE_METHODS
from gateway.types import Identity, ResolvedRoute
from idempotency.errors import IdempotencyKeyMissing
from idempotency.services import (
    ANONYMOUS_SCOPE,
    META_HEADER,
    IdempotentRequest,
    Replay,
    idempotency_begin,
    idempotency_complete,
    idempotency_fail,
    idempotency_key_parse,
    idempotency_replay_response,
    idempotency_request_hash,
    idempotency_response_capture,
    idempotency_scope,
    idempotency_status_is_final,
)

logger = logging.getLogger(__name__)

LOCK_MARGIN_SECONDS = 5


def gateway_idempotency(
    *,
    request: HttpRequest,
    route: ResolvedRoute,
    identity: Identity | None,
    path: str,
    body: bytes,
    execute: Callable[[], HttpResponseBase],
) -> HttpResponseBase:
    """Run `execute` (the proxy call) under the route's idempotency policy.

    Returns the upstream response (a streamed one buffered up to IDEMPOTENCY_MAX_RESPONSE_BYTES),
    a replay of the stored one, or a problem+json response (400, 409, 422).
    """
    method = (request.method or "GET").upper()
    if route.idempotency not in ("optional", "required") or method in SAFE_METHODS:
        return execute()
    try:
        key = idempotency_key_parse(header=request.META.get(META_HEADER))
        if key is None:
            if route.idempotency == "required":
                raise IdempotencyKeyMissing()
            return execute()
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
            request_hash=idempotency_request_hash(
                method=method,
                path=path,
                query=request.META.get("QUERY_STRING", "").encode("latin-1", "replace"),
                body=body,
            ),
        )
        lock_timeout = max(
            settings.IDEMPOTENCY_LOCK_TIMEOUT_SECONDS, route.timeout_ms / 1000 + LOCK_MARGIN_SECONDS
        )
        outcome = idempotency_begin(request=fingerprint, entry="gateway", lock_timeout_seconds=lock_timeout)
    except ApplicationError as error:
        return error.to_response()
    if isinstance(outcome, Replay):
        return idempotency_replay_response(stored=outcome.response)

    try:
        response = execute()
    except BaseException:  # timeouts and network errors the proxy did not turn into a response
        idempotency_fail(claim=outcome)
        raise
    try:
        response, stored = idempotency_response_capture(response=response)
    except BaseException:  # the upstream broke off while we buffered its body
        idempotency_fail(claim=outcome)
        response.close()
        raise
    try:
        if idempotency_status_is_final(status=stored.status):
            idempotency_complete(claim=outcome, response=stored)
        else:
            idempotency_fail(claim=outcome)
    except DatabaseError:
        # The upstream has answered: the client gets that answer. The record stays `processing`
        # (retries get 409 in-progress) until its lock expires and a retry runs again.
        logger.exception("idempotency: could not record the outcome for key %r", outcome.request.key)
    return response
