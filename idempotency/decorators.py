"""`@idempotent()` for DRF APIView methods.

    class OrderCreateApi(APIView):
        @idempotent()                    # Idempotency-Key required (400 when missing)
        def post(self, request): ...

        @idempotent(required=False)      # key optional: without one the handler just runs

The key is claimed in its own committed statement before the handler runs; the handler then runs
inside `transaction.atomic()` together with the record's completion, so the handler's writes
(order + outbox event) and the stored response commit or roll back as one. A crash before that
commit leaves nothing but a `processing` record, which a retry takes over after
IDEMPOTENCY_LOCK_TIMEOUT_SECONDS and executes again — safely, since nothing was committed. An
answer that releases the key (5xx, 408, 425, 429, 401, 403), returned or raised, rolls the
handler's writes back for the same reason: the retry it invites is the only execution that commits.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable
from typing import Any

from django.db import transaction
from django.http import HttpResponseBase
from django.http.request import RawPostDataException
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework.request import Request
from rest_framework.views import APIView

from idempotency.errors import IdempotencyInProgress, IdempotencyKeyMissing
from idempotency.services import (
    ANONYMOUS_SCOPE,
    HEADER,
    MAX_KEY_LENGTH,
    META_HEADER,
    RETRY_AFTER_SECONDS,
    Claim,
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

Handler = Callable[..., HttpResponseBase]

# The bare form, exactly as idempotency_key_parse accepts it: printable ASCII, not starting with a
# quote (that is the quoted form) nor with or ending in a space (stripped).
KEY_SCHEMA = {
    "type": "string",
    "minLength": 1,
    "maxLength": MAX_KEY_LENGTH,
    "pattern": r"^[!#-~]([ -~]*[!-~])?$",
}


class _ClaimLost(Exception):
    """Our claim was taken over while the handler ran: roll its work back."""


def idempotent(handler: Handler | None = None, *, required: bool = True) -> Any:
    """Make a DRF view method idempotent under the `Idempotency-Key` header."""

    def decorate(func: Handler) -> Handler:
        @functools.wraps(func)
        def wrapper(view: APIView, request: Request, *args: Any, **kwargs: Any) -> HttpResponseBase:
            key = idempotency_key_parse(header=request.META.get(META_HEADER))
            if key is None:
                if required:
                    raise IdempotencyKeyMissing()
                return func(view, request, *args, **kwargs)
            outcome = idempotency_begin(request=_idempotent_request(request, key), entry="api")
            if isinstance(outcome, Replay):
                return idempotency_replay_response(stored=outcome.response)
            return _execute(outcome, func, view, request, args, kwargs)

        # The header in the OpenAPI schema (/api/schema, /api/docs) of the decorated operation.
        return extend_schema(
            parameters=[
                OpenApiParameter(
                    HEADER,
                    type=KEY_SCHEMA,
                    location=OpenApiParameter.HEADER,
                    required=required,
                    description="1–255 printable ASCII characters (0x20–0x7E), bare or as an RFC 8941 "
                    'quoted string (`"…"`, with `\\"` and `\\\\` escapes); surrounding spaces are '
                    "ignored. A retry with the same key and request gets the first response, with "
                    "`Idempotent-Replayed: true`; the same key with another request is a 422.",
                )
            ]
        )(wrapper)

    return decorate(handler) if handler is not None else decorate


def _execute(
    claim: Claim, func: Handler, view: APIView, request: Request, args: tuple, kwargs: dict
) -> HttpResponseBase:
    try:
        with transaction.atomic():
            response = _rendered(view, request, func(view, request, *args, **kwargs), args, kwargs)
            response, stored = idempotency_response_capture(response=response)
            if not idempotency_status_is_final(status=stored.status):
                # A "try again" answer returned rather than raised: undo the handler's writes as
                # a raised error would, or the retry it invites commits them a second time.
                transaction.set_rollback(True)
            elif not idempotency_complete(claim=claim, response=stored):
                raise _ClaimLost
            else:
                return response
    except _ClaimLost:
        # Whoever took the key over runs (or ran) the request; ours left no trace.
        raise IdempotencyInProgress(retry_after=RETRY_AFTER_SECONDS) from None
    except Exception as exc:
        # The handler's transaction is rolled back. Answer as DRF would (a raised ValidationError
        # is a 400 to store and replay) and record that answer; unexpected errors release the key.
        try:
            response = _rendered(view, request, view.handle_exception(exc), args, kwargs)
        except BaseException:
            idempotency_fail(claim=claim)
            raise
        return _settle(claim, response)
    # A non-final status returned without raising (5xx, 408, 429…), its work rolled back: the key
    # is released only now, outside the rolled-back transaction.
    idempotency_fail(claim=claim)
    return response


def _settle(claim: Claim, response: HttpResponseBase) -> HttpResponseBase:
    """Record the answer to a handler that raised (its transaction is already rolled back)."""
    response, stored = idempotency_response_capture(response=response)
    if not idempotency_status_is_final(status=stored.status):
        idempotency_fail(claim=claim)
    elif not idempotency_complete(claim=claim, response=stored):
        # Taken over while the handler ran: the new owner's outcome is what retries will get, so
        # this stale answer must not reach the client either — the same 409 as the success path.
        raise IdempotencyInProgress(retry_after=RETRY_AFTER_SECONDS) from None
    return response


def _rendered(
    view: APIView, request: Request, response: HttpResponseBase, args: tuple, kwargs: dict
) -> HttpResponseBase:
    """The final bytes of a DRF response, as the client will receive them."""
    response = view.finalize_response(request, response, *args, **kwargs)
    render = getattr(response, "render", None)
    if callable(render) and not getattr(response, "is_rendered", True):
        render()
    return response


def _idempotent_request(request: Request, key: str) -> IdempotentRequest:
    try:
        body = request.body
    except RawPostDataException:  # something parsed the stream already: hash what it parsed
        body = json.dumps(request.data, sort_keys=True, default=str).encode()
    return IdempotentRequest(
        scope=_scope(getattr(request, "user", None)),
        key=key,
        method=request.method,
        path=request.path,
        request_hash=idempotency_request_hash(
            method=request.method,
            path=request.path,
            query=request.META.get("QUERY_STRING", "").encode("latin-1", "replace"),
            body=body,
        ),
    )


def _scope(user: Any) -> str:
    """The caller's user and tenant from the verified identity; `anonymous` without one."""
    if user is None or not getattr(user, "is_authenticated", False):
        return ANONYMOUS_SCOPE
    user_id = getattr(user, "user_id", None)
    if user_id:  # gateway.types.Identity from a Bearer token
        return idempotency_scope(user_id=str(user_id), tenant_id=getattr(user, "tenant_id", "") or "")
    if getattr(user, "pk", None) is not None:  # a Django user (session)
        return idempotency_scope(user_id=f"django:{user.pk}", tenant_id="")
    return ANONYMOUS_SCOPE
