"""The token service's public keys (JWKS): Redis (`jwks:public_key`, 600 s) plus a per-process layer.

Keys are parsed once per process into `PyJWK` objects, indexed by `kid`; only RS256 and ES256 keys
are kept, and each key's algorithm comes from the JWKS, never from a token. An unknown `kid`
triggers one refetch, but at most one per `JWT_JWKS_REFETCH_COOLDOWN_SECONDS` across all instances
(a Redis compare-and-set on a wall-clock deadline) or per process when Redis is down, so a flood of
random kids cannot flood the token service. When the token service is down the last key set this
process saw keeps verifying; with no key set at all, a failed fetch is not retried for
`JWKS_FAILURE_BACKOFF_SECONDS` (503 meanwhile).
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import Any

import requests
from django.conf import settings
from django.core.cache import cache
from jwt import PyJWK
from jwt.exceptions import PyJWKError
from prometheus_client import Counter

from common.local_cache import LocalTTLCache
from gateway.caching.registry import cache_register
from gateway.caching.two_level import TwoLevelCache
from gateway.services.cache_stats import cache_hit, cache_miss
from gateway.services.shared_cache import shared_cache_call, shared_cache_is_redis
from gateway.services.verified_tokens import token_verified_cache_clear

logger = logging.getLogger("gatehouse.auth.jwks")

ALLOWED_ALGORITHMS = frozenset({"RS256", "ES256"})
JWKS_CACHE_KEY = "jwks:public_key"
JWKS_TTL_SECONDS = 600
# Outside the `jwks:*` key space so cache stats and `gateway_cache flush --kind jwks` ignore it.
REFETCH_COOLDOWN_KEY = "gatehouse:jwks-refetch-cooldown"
LOCAL_TTL_SECONDS = 60.0  # re-read Redis this often; rotation messages drop it sooner
FETCH_TIMEOUT = (1.0, 2.0)  # connect, read: a slow token service must not hold requests long
JWKS_FAILURE_BACKOFF_SECONDS = 3.0  # after a failed cold fetch, answer 503 without asking again

_MISSING = object()

jwks_fetches = Counter(
    "gateway_jwks_fetches_total",
    "JWKS fetches from the token service, by reason (cold, unknown_kid, refresh) and outcome.",
    ["reason", "outcome"],
)


class JwksKeyNotFound(Exception):
    """No usable key for this token (unknown kid, kid missing with several keys, …)."""


class JwksUnavailable(Exception):
    """No key set at all: never fetched and the token service cannot be reached."""


@dataclass(frozen=True, slots=True)
class KeySet:
    keys: dict[str, PyJWK]  # by kid; "" for a key published without one
    fetched_at: float

    def key_for(self, kid: str | None) -> PyJWK | None:
        if kid is None:
            # Without a kid the choice is only unambiguous when there is exactly one key.
            return next(iter(self.keys.values())) if len(self.keys) == 1 else None
        return self.keys.get(kid)


def _decode(key: str, raw: object) -> dict | None:
    return raw if isinstance(raw, dict) and isinstance(raw.get("keys"), list) else None


def _on_jwks_message(cache: TwoLevelCache, payload: dict) -> None:
    jwks_local_clear()


# Redis: `jwks:public_key` = {keys, fetched_at} (JSON). Local: the parsed KeySet under "keyset".
jwks_cache = cache_register(
    TwoLevelCache(
        "jwks",
        shared_ttl_seconds=JWKS_TTL_SECONDS,
        local_ttl_seconds=LOCAL_TTL_SECONDS,
        max_local_entries=2,
        decode=_decode,
        on_invalidate=_on_jwks_message,
    )
)
_local = jwks_cache.local
# The last key set this process parsed, kept for a day: verifies while Redis and the token service
# are both down. A LocalTTLCache so tests reset it.
_last_known = LocalTTLCache("jwks-last-known", ttl_seconds=86_400, max_entries=1)
_process_cooldown = LocalTTLCache("jwks-refetch-cooldown", ttl_seconds=30, max_entries=1)
# Negative cache of a failed cold fetch (no key set anywhere): one attempt per few seconds.
_cold_failure = LocalTTLCache("jwks-cold-failure", ttl_seconds=JWKS_FAILURE_BACKOFF_SECONDS, max_entries=1)
_fetch_lock = threading.Lock()

# Atomic "take the cooldown if it has passed": the stored value is the wall-clock deadline, so the
# bound holds by the clock (EX only garbage-collects the key).
_COOLDOWN_SCRIPT = """
local current = redis.call('GET', KEYS[1])
if current and tonumber(current) > tonumber(ARGV[1]) then return 0 end
redis.call('SET', KEYS[1], ARGV[2], 'EX', ARGV[3])
return 1
"""


def jwks_signing_key(*, kid: str | None) -> PyJWK:
    """The verification key for a token's `kid` (raises JwksKeyNotFound / JwksUnavailable)."""
    from gateway.services.invalidation import invalidation_poll

    if not settings.JWT_JWKS_URL:
        return _dev_signing_key(kid=kid)
    invalidation_poll()
    keyset = _keyset()
    key = keyset.key_for(kid)
    if key is not None:
        return key
    if kid is None:
        raise JwksKeyNotFound("The token has no kid and the key set has several keys.")
    # Unknown kid: another instance may already have refetched (Redis is newer than our copy).
    shared = _keyset_from_redis(current=keyset)
    if shared is not None and shared.fetched_at > keyset.fetched_at:
        _remember(shared)
        key = shared.key_for(kid)
        if key is not None:
            return key
    if not _refetch_allowed():
        raise JwksKeyNotFound("Unknown key id.")
    try:
        keyset = _fetch_and_store(reason="unknown_kid")
    except JwksUnavailable as exc:
        # Keys are known and this kid is not among them: the token cannot be verified, a 401 like
        # any other token failure. 503 is kept for having no key set at all.
        raise JwksKeyNotFound("Unknown key id (the key set could not be refreshed).") from exc
    key = keyset.key_for(kid)
    if key is None:
        raise JwksKeyNotFound("Unknown key id.")
    return key


NO_KEY_SOURCE = (
    "No token key source is configured: set JWT_JWKS_URL to the token service's JWKS, or, in "
    "development, create the development key with `manage.py dev_token`."
)


def token_key_source() -> str:
    """ "jwks", "dev_key" (the development key is trusted and exists) or "none"."""
    from gateway.services.dev_key import dev_public_key

    if settings.JWT_JWKS_URL:
        return "jwks"
    return "dev_key" if dev_public_key() is not None else "none"


def _dev_signing_key(*, kid: str | None) -> PyJWK:
    """Embedded mode: the development key (never consulted when JWT_JWKS_URL is set)."""
    from gateway.services.dev_key import dev_public_key

    found = dev_public_key()
    if found is None:
        raise JwksUnavailable(NO_KEY_SOURCE)
    key, dev_kid = found
    if kid is not None and kid != dev_kid:
        raise JwksKeyNotFound("Unknown key id.")
    return key


def jwks_refresh(*, publish: bool = True) -> int:
    """Fetch the key set now, store it, and tell every instance (`jwt.jwks.rotated`)."""
    keyset = _fetch_and_store(reason="refresh")
    jwks_local_clear()  # this process now (tokens verified with a removed key); others on the message
    _remember(keyset)
    if publish:
        from gateway.services.invalidation import invalidation_publish

        # Not jwks_cache.publish: this process has just cleared and refilled its layer.
        invalidation_publish(kind="jwks", payload={"event": "jwt.jwks.rotated"})
    return len(keyset.keys)


def jwks_local_clear() -> None:
    """Forget this process's copy (not the last-known fallback): the next look-up reads Redis."""
    _local.clear()
    token_verified_cache_clear()


def _keyset() -> KeySet:
    keyset = _local.get("keyset")
    if keyset is not None:
        cache_hit("jwks")
        return keyset
    keyset = _keyset_from_redis(current=_last_known.get("keyset"))
    if keyset is not None:
        cache_hit("jwks")
        _remember(keyset)
        return keyset
    cache_miss("jwks")
    with _fetch_lock:
        keyset = _local.get("keyset")  # another thread fetched while we waited
        if keyset is not None:
            return keyset
        if _cold_failure.get("failed") is not None:
            # No keys and the token service failed moments ago: answer 503 at once rather than
            # have every request wait on (and add load to) a service that is down.
            raise JwksUnavailable("The token service failed moments ago; not asking again yet.")
        try:
            # A cold fetch is not gated by the refetch cooldown: nothing verifies without keys,
            # and it happens once per JWKS_TTL_SECONDS (the Redis entry), not per token.
            return _fetch_and_store(reason="cold", locked=True)
        except JwksUnavailable:
            stale = _last_known.get("keyset")
            if stale is None:
                _cold_failure.set("failed", True)
                raise
            logger.warning("token service unreachable, verifying with the last known key set")
            _local.set("keyset", stale, ttl_seconds=5.0)  # retry the fetch in a few seconds
            return stale


def _keyset_from_redis(*, current: KeySet | None) -> KeySet | None:
    raw = jwks_cache.shared_get(JWKS_CACHE_KEY)
    if raw is None:
        return None
    fetched_at = float(raw.get("fetched_at") or 0)
    if current is not None and current.fetched_at == fetched_at:
        return current  # same set: keep the parsed keys
    return KeySet(keys=_parse_keys(raw.get("keys") or []), fetched_at=fetched_at)


def _remember(keyset: KeySet) -> None:
    _local.set("keyset", keyset)
    _last_known.set("keyset", keyset)
    _cold_failure.delete("failed")


def _fetch_and_store(*, reason: str, locked: bool = False) -> KeySet:
    if not locked:
        with _fetch_lock:
            return _fetch_and_store(reason=reason, locked=True)
    try:
        document = _fetch_document()
    except JwksUnavailable:
        jwks_fetches.labels(reason, "failed").inc()
        raise
    jwks_fetches.labels(reason, "ok").inc()
    fetched_at = time.time()
    keyset = KeySet(keys=_parse_keys(document.get("keys") or []), fetched_at=fetched_at)
    raw = {"keys": document.get("keys") or [], "fetched_at": fetched_at}
    jwks_cache.shared_set(JWKS_CACHE_KEY, raw)
    _remember(keyset)
    logger.info("JWKS fetched (%s): %d usable keys", reason, len(keyset.keys))
    return keyset


def _fetch_document() -> dict[str, Any]:
    url = settings.JWT_JWKS_URL
    if not url:
        raise JwksUnavailable("JWT_JWKS_URL is not configured.")
    try:
        response = requests.get(url, timeout=FETCH_TIMEOUT, headers={"Accept": "application/json"})
        response.raise_for_status()
        document = response.json()
    except (requests.RequestException, ValueError) as exc:
        logger.warning("JWKS fetch from %s failed: %s", url, exc)
        raise JwksUnavailable(str(exc)) from exc
    if not isinstance(document, dict) or not isinstance(document.get("keys"), list):
        raise JwksUnavailable("The JWKS document has no key list.")
    return document


def _parse_keys(jwks: list[Any]) -> dict[str, PyJWK]:
    keys: dict[str, PyJWK] = {}
    for jwk in jwks:
        if not isinstance(jwk, dict) or jwk.get("use", "sig") != "sig":
            continue
        if jwk.get("kty") not in ("RSA", "EC"):
            continue  # symmetric ("oct") or other keys never verify our tokens
        try:
            key = PyJWK(jwk)  # algorithm: the JWK's "alg", else inferred from kty/crv
        except (PyJWKError, ValueError, TypeError) as exc:
            logger.warning("ignoring unusable JWK %r: %s", jwk.get("kid"), exc)
            continue
        if key.algorithm_name not in ALLOWED_ALGORITHMS:
            continue
        keys[str(jwk.get("kid") or "")] = key
    return keys


def _refetch_allowed() -> bool:
    """At most one refetch per cooldown: shared through Redis, per process when it is down."""
    if _process_cooldown.get("taken") is not None:
        return False
    return _take_cooldown()


def _take_cooldown() -> bool:
    cooldown = max(1, int(settings.JWT_JWKS_REFETCH_COOLDOWN_SECONDS))
    taken: object = _MISSING
    if shared_cache_is_redis():

        def take() -> bool:
            from django_redis import get_redis_connection

            now = time.time()
            client = get_redis_connection("default")
            return bool(
                client.eval(
                    _COOLDOWN_SCRIPT, 1, cache.make_key(REFETCH_COOLDOWN_KEY), now, now + cooldown, cooldown
                )
            )

        taken = shared_cache_call(take, _MISSING)
    if taken is _MISSING:  # no Redis (or it is down): this process's own cooldown
        taken = _process_cooldown.get("taken") is None
    if taken:
        _process_cooldown.set("taken", True, ttl_seconds=cooldown)
    return bool(taken)
