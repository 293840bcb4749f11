"""Revoked tokens: the database is the record, Redis (`revoked:{jti}`, 180 s) its shared cache.

Look-up: this process (≤ 1 s for "not revoked") → Redis → database → introspection
(`TOKEN_INTROSPECT_URL`, RFC 7662) when configured. A revocation is written to the database and
Redis and published (invalidation kind "revoked"), so every instance refuses the token within a
second; the 1 s local layer bounds that even when the message is lost.

Readers cache "false" only where nothing is cached yet (SET NX), so a revocation committed while
they were reading the database is never overwritten. The revoker writes "true" to Redis itself,
past the shared-cache breaker; if Redis cannot be written it says so (`RevocationNotShared`, 503)
after recording and announcing the revocation, because a "false" left there would hide it.
"""

from __future__ import annotations

import logging
import time
from datetime import datetime, timedelta
from urllib.parse import quote_plus

import requests
from django.conf import settings
from django.db import transaction
from django.utils import timezone

from common.errors import ServiceUnavailable
from common.local_cache import LocalTTLCache
from gateway.caching.registry import cache_register
from gateway.caching.two_level import TwoLevelCache
from gateway.models import RevokedToken
from gateway.services.cache_stats import cache_hit, cache_miss

logger = logging.getLogger("gatehouse.auth.revocation")

REVOKED_TTL_SECONDS = 180
NOT_REVOKED_LOCAL_SECONDS = 1.0  # the "within 1 s on every instance" bound, message or not
REVOKED_LOCAL_SECONDS = 60.0  # a revocation never goes back, hold it longer
INTROSPECT_TIMEOUT = (0.5, 2.0)


def _decode(key: str, raw: object) -> bool | None:
    # JSON true/false; the strings "true"/"false" of the SPEC's first format are read as well.
    if isinstance(raw, bool):
        return raw
    return {"true": True, "false": False}.get(raw) if isinstance(raw, str) else None


def _on_revoked_message(cache: TwoLevelCache, payload: dict) -> None:
    jti = payload.get("jti")
    if payload.get("resync") or payload.get("flush") or not jti:
        cache.local.clear()
    else:
        # The message says this jti is revoked: hold that here, not just forget what we had, so
        # this instance refuses it even while Redis still holds a stale "false".
        _remember(str(jti), True)


# Keyed by jti locally, `revoked:{jti}` in Redis (JSON true / false).
revoked_cache = cache_register(
    TwoLevelCache(
        "revoked",
        shared_ttl_seconds=REVOKED_TTL_SECONDS,
        local_ttl_seconds=NOT_REVOKED_LOCAL_SECONDS,
        max_local_entries=50_000,
        decode=_decode,
        on_invalidate=_on_revoked_message,
    )
)
_local = revoked_cache.local
# A refused introspection client is logged as an error once a minute, not on every request.
_client_refusal_logged = LocalTTLCache("introspection-client-refused", ttl_seconds=60, max_entries=1)


class RevocationNotShared(ServiceUnavailable):
    """The revocation is in the database (and announced), but `revoked:{jti}` could not be set in
    Redis: an instance that cached "not revoked" there may accept the token until that entry
    expires. Revoking again (idempotent) once Redis answers closes the gap."""


def revoked_cache_key(jti: str) -> str:
    return f"revoked:{jti}"


def token_is_revoked(*, jti: str, token: str | None = None, expires_at: float | None = None) -> bool:
    """Whether `jti` is revoked. `token` enables introspection on a miss; `expires_at` (epoch
    seconds) bounds how long a positive answer is cached."""
    from gateway.services.invalidation import invalidation_poll

    invalidation_poll()
    local = _local.get(jti)
    if local is not None:
        cache_hit("revoked")
        return local
    key = revoked_cache_key(jti)
    shared = revoked_cache.shared_get(key)
    if shared is not None:
        cache_hit("revoked")
        _remember(jti, shared)
        return shared
    cache_miss("revoked")
    revoked = RevokedToken.objects.filter(jti=jti).exists()
    cacheable = True
    if not revoked and token and settings.TOKEN_INTROSPECT_URL:
        active = _introspect(token)
        if active is None:
            cacheable = False  # unknown: ask again on the next request
        else:
            revoked = not active
    if cacheable:
        ttl = REVOKED_TTL_SECONDS
        if expires_at is not None:  # no point keeping an answer about a token past its expiry
            ttl = max(1, min(ttl, int(expires_at - time.time()) + 1))
        if revoked:
            revoked_cache.shared_set(key, True, ttl=ttl)
        else:
            revoked = _cache_not_revoked(key, ttl)
    _remember(jti, revoked)
    return revoked


async def token_is_revoked_async(
    *, jti: str, token: str | None = None, expires_at: float | None = None
) -> bool:
    """`token_is_revoked` for the event loop: local layer, then Redis through redis.asyncio; the
    database / introspection fallback runs in the gateway's bounded pool, never on the loop."""
    from gateway.services.db_pool import in_db
    from gateway.services.invalidation import invalidation_poll, invalidation_poll_due

    if invalidation_poll_due():
        await in_db(invalidation_poll)
    local = _local.get(jti)
    if local is not None:
        cache_hit("revoked")
        return local
    shared = await revoked_cache.ashared_get(revoked_cache_key(jti))
    if shared is not None:
        cache_hit("revoked")
        _remember(jti, shared)
        return shared
    return await in_db(token_is_revoked, jti=jti, token=token, expires_at=expires_at)


def _cache_not_revoked(key: str, ttl: int) -> bool:
    """Cache "false" only if nothing is cached (SET NX); returns True if a "true" is there instead.

    A revocation committed after our database read has already written "true" (its write follows
    its commit); a plain SET would replace it and hide the revocation for the whole TTL.
    """
    if revoked_cache.shared_add(key, False, ttl=ttl) is not False:
        return False  # written, or no usable Redis (then nothing there can say "true")
    return revoked_cache.shared_get(key) is True


def _remember(jti: str, revoked: bool) -> None:
    _local.set(jti, revoked, REVOKED_LOCAL_SECONDS if revoked else NOT_REVOKED_LOCAL_SECONDS)


def _introspect(token: str) -> bool | None:
    """RFC 7662 `active`, or None when the token service cannot answer.

    None is treated as "not revoked" (the database's revocations still apply): an introspection
    outage must not take down every request whose signature verifies. Not cached, so the next
    request asks again.
    """
    try:
        response = requests.post(
            settings.TOKEN_INTROSPECT_URL,
            data={"token": token, "token_type_hint": "access_token"},
            headers={"Accept": "application/json"},
            auth=_introspection_client_auth(),
            timeout=INTROSPECT_TIMEOUT,
        )
        if response.status_code in (401, 403):
            _log_client_refused(response.status_code)
            return None
        response.raise_for_status()
        body = response.json()
    except (requests.RequestException, ValueError) as exc:
        logger.warning("token introspection failed: %s", exc)
        return None
    if not isinstance(body, dict) or not isinstance(body.get("active"), bool):
        logger.warning("token introspection answered without a boolean 'active'")
        return None
    return body["active"]


def _introspection_client_auth() -> tuple[str, str] | None:
    """HTTP Basic credentials for the introspection endpoint (RFC 7662 §2.1), or None when unset.

    RFC 6749 §2.3.1: client id and secret are form-urlencoded before the Basic encoding, so a
    secret holding ':' or non-ASCII characters reaches the server intact.
    """
    client_id = settings.TOKEN_INTROSPECT_CLIENT_ID
    if not client_id:
        return None
    return quote_plus(client_id), quote_plus(settings.TOKEN_INTROSPECT_CLIENT_SECRET)


def _log_client_refused(status: int) -> None:
    # Not an outage: every introspection will fail until the settings are fixed. Still answered
    # like one (not revoked, not cached) so valid tokens keep working.
    if _client_refusal_logged.get("logged") is None:
        _client_refusal_logged.set("logged", True)
        logger.error(
            "token introspection refused the gateway's client credentials (HTTP %s): configuration "
            "error, check TOKEN_INTROSPECT_CLIENT_ID / TOKEN_INTROSPECT_CLIENT_SECRET",
            status,
        )


@transaction.atomic
def token_revoke(
    *, jti: str, expires_at: datetime | None = None, ttl_seconds: int | None = None
) -> RevokedToken:
    """Revoke `jti` until the token can no longer be accepted; idempotent, a later expiry extends it.

    `expires_at` is the token's own `exp` (kept until then plus the clock leeway); `ttl_seconds` its
    remaining life; with neither, the longest lifetime a token may have (JWT_MAX_TOKEN_LIFETIME_SECONDS
    plus leeway), so a revocation never expires before its token. Never kept past that bound: no
    accepted token lives longer.

    Raises RevocationNotShared (503) when, after the commit, Redis could not be updated; the
    database row stays. Called inside an outer transaction, that surfaces where it commits.
    """
    if not jti or len(jti) > 255:
        raise ValueError("jti must be 1-255 characters")
    expires_at = revocation_expiry(expires_at=expires_at, ttl_seconds=ttl_seconds)
    # No check-then-insert: insert-or-ignore, then a conditional update that only ever extends.
    RevokedToken.objects.bulk_create([RevokedToken(jti=jti, expires_at=expires_at)], ignore_conflicts=True)
    RevokedToken.objects.filter(jti=jti, expires_at__lt=expires_at).update(expires_at=expires_at)
    revoked = RevokedToken.objects.get(jti=jti)
    # Not robust: a failure to update Redis must reach the caller (command exits non-zero, API 503).
    transaction.on_commit(lambda: _revocation_announce(jti), robust=False)
    return revoked


def revocation_expiry(*, expires_at: datetime | None = None, ttl_seconds: int | None = None) -> datetime:
    """Until when a revocation must be kept (see `token_revoke`)."""
    from gateway.services.tokens import max_token_lifetime_seconds

    now = timezone.now()
    longest = now + timedelta(seconds=max_token_lifetime_seconds())
    leeway = timedelta(seconds=int(settings.JWT_LEEWAY_SECONDS))
    if expires_at is not None:
        return min(expires_at + leeway, longest)
    if ttl_seconds:
        return min(now + timedelta(seconds=ttl_seconds) + leeway, longest)
    return longest


def _revocation_announce(jti: str) -> None:
    from gateway.services.invalidation import invalidation_publish

    shared = _revoked_cache_write(jti)
    _remember(jti, True)
    invalidation_publish(kind="revoked", payload={"jti": jti})  # instances hold "true" locally
    if not shared:
        raise RevocationNotShared(
            f"The revocation of {jti!r} is recorded, but Redis could not be updated: instances "
            f"that cached the token as not revoked may accept it for up to {REVOKED_TTL_SECONDS} s. "
            "Revoke again once Redis answers."
        )


def _revoked_cache_write(jti: str) -> bool:
    """Set `revoked:{jti}` = "true"; False if Redis could not be written.

    Directly, not through `shared_cache_call`: its breaker skips Redis for 3 s after any failure
    this process saw, and a skipped write would leave a cached "false" in place.
    """
    if not revoked_cache.shared_enabled():
        return True  # embedded mode: nothing shared to update (the database is read on a miss)
    try:
        revoked_cache.shared_set(revoked_cache_key(jti), True, ttl=REVOKED_TTL_SECONDS, direct=True)
    except Exception as exc:  # redis-py errors
        logger.error("revocation of %r not written to Redis: %s: %s", jti, type(exc).__name__, exc)
        return False
    return True


def revoked_tokens_purge(*, now: datetime | None = None, dry_run: bool = False) -> int:
    """Delete revocations of tokens that have expired anyway; returns how many (`dry_run`: only
    counts them)."""
    expired = RevokedToken.objects.filter(expires_at__lt=now or timezone.now())
    if dry_run:
        return expired.count()
    deleted, _ = expired.delete()
    return deleted
