"""Revoked tokens: the database is the record, Redis (`revoked:{jti}`, 180 s) its shared cache.

Look-up: this process (≤ 1 s for "not revoked") → Redis → database → introspection
(`TOKEN_INTROSPECT_URL`, RFC 7662) when configured. A revocation is written to the database and
Redis and published (invalidation kind "revoked"), so every instance refuses the token within a
second; the 1 s local layer bounds that even when the message is lost.
"""

from __future__ import annotations

import logging
import time
from datetime import datetime, timedelta

import requests
from django.conf import settings
from django.core.cache import cache
from django.db import transaction
from django.utils import timezone

from common.local_cache import LocalTTLCache
from gateway.models import RevokedToken
from gateway.services.cache_stats import cache_hit, cache_miss
from gateway.services.shared_cache import shared_cache_call

logger = logging.getLogger("gatehouse.auth.revocation")

REVOKED_TTL_SECONDS = 180
NOT_REVOKED_LOCAL_SECONDS = 1.0  # the "within 1 s on every instance" bound, message or not
REVOKED_LOCAL_SECONDS = 60.0  # a revocation never goes back, hold it longer
INTROSPECT_TIMEOUT = (0.5, 2.0)
DEFAULT_REVOCATION_TTL_SECONDS = 24 * 3600  # when the caller does not know the token's expiry

_local = LocalTTLCache("revoked", ttl_seconds=NOT_REVOKED_LOCAL_SECONDS, max_entries=50_000)
_subscribed = False


def revoked_cache_key(jti: str) -> str:
    return f"revoked:{jti}"


def token_is_revoked(*, jti: str, token: str | None = None, expires_at: float | None = None) -> bool:
    """Whether `jti` is revoked. `token` enables introspection on a miss; `expires_at` (epoch
    seconds) bounds how long a positive answer is cached."""
    _ensure_subscribed()
    local = _local.get(jti)
    if local is not None:
        cache_hit("revoked")
        return local
    key = revoked_cache_key(jti)
    shared = shared_cache_call(lambda: cache.get(key), None)
    if shared in ("true", "false"):
        cache_hit("revoked")
        revoked = shared == "true"
        _remember(jti, revoked)
        return revoked
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
        shared_cache_call(lambda: cache.set(key, "true" if revoked else "false", ttl), None)
    _remember(jti, revoked)
    return revoked


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
            timeout=INTROSPECT_TIMEOUT,
        )
        response.raise_for_status()
        body = response.json()
    except (requests.RequestException, ValueError) as exc:
        logger.warning("token introspection failed: %s", exc)
        return None
    if not isinstance(body, dict) or not isinstance(body.get("active"), bool):
        logger.warning("token introspection answered without a boolean 'active'")
        return None
    return body["active"]


@transaction.atomic
def token_revoke(
    *, jti: str, expires_at: datetime | None = None, ttl_seconds: int | None = None
) -> RevokedToken:
    """Revoke `jti` until `expires_at` (or now + ttl); idempotent, a later expiry extends it."""
    if not jti or len(jti) > 255:
        raise ValueError("jti must be 1-255 characters")
    if expires_at is None:
        expires_at = timezone.now() + timedelta(seconds=ttl_seconds or DEFAULT_REVOCATION_TTL_SECONDS)
    # No check-then-insert: insert-or-ignore, then a conditional update that only ever extends.
    RevokedToken.objects.bulk_create([RevokedToken(jti=jti, expires_at=expires_at)], ignore_conflicts=True)
    RevokedToken.objects.filter(jti=jti, expires_at__lt=expires_at).update(expires_at=expires_at)
    revoked = RevokedToken.objects.get(jti=jti)
    transaction.on_commit(lambda: _revocation_announce(jti))
    return revoked


def _revocation_announce(jti: str) -> None:
    from gateway.services.invalidation import invalidation_publish

    shared_cache_call(lambda: cache.set(revoked_cache_key(jti), "true", REVOKED_TTL_SECONDS), None)
    _remember(jti, True)
    invalidation_publish(kind="revoked", payload={"jti": jti})


def revoked_tokens_purge(*, now: datetime | None = None) -> int:
    """Delete revocations of tokens that have expired anyway; returns how many."""
    deleted, _ = RevokedToken.objects.filter(expires_at__lt=now or timezone.now()).delete()
    return deleted


def _on_revoked_invalidated(payload: dict) -> None:
    jti = payload.get("jti")
    if payload.get("resync") or not jti:
        _local.clear()
    else:
        _local.delete(jti)


def _ensure_subscribed() -> None:
    global _subscribed
    if _subscribed:
        return
    from gateway.services.invalidation import invalidation_subscribe

    invalidation_subscribe("revoked", _on_revoked_invalidated)
    _subscribed = True
