"""Permissions of a (user, tenant): the RBAC resolver behind Redis (`rbac:{user}:{tenant}`, 300 s)
and a short per-process layer. Resolver down and nothing cached → 503, never an allow.

`rbac.updated` (invalidation kind "rbac", payload `{user_id, tenant_id}` or `{all: true}`) drops
the entries on every instance.
"""

from __future__ import annotations

import logging
import time

import requests
from django.conf import settings

from common.errors import ServiceUnavailable
from gateway.caching.registry import cache_register
from gateway.caching.two_level import TwoLevelCache
from gateway.services.cache_stats import cache_hit, cache_miss
from gateway.services.shared_cache import shared_cache_call, shared_cache_delete_pattern

logger = logging.getLogger("gatehouse.auth.rbac")

RBAC_TTL_SECONDS = 300
# Messages drop entries at once; this bounds staleness when one is lost (Redis down).
LOCAL_TTL_SECONDS = 5.0
RESOLVER_TIMEOUT = (0.5, 2.0)


def _decode(key: str, entry: object) -> dict | None:
    return entry if isinstance(entry, dict) else None


def _on_rbac_message(cache: TwoLevelCache, payload: dict) -> None:
    if payload.get("resync") or payload.get("all") or "user_id" not in payload:
        cache.local.clear()
    else:
        cache.local.delete(
            rbac_cache_key(user_id=str(payload["user_id"]), tenant_id=str(payload.get("tenant_id") or ""))
        )


# Local entries and Redis values are the same JSON object {user_id, tenant_id, permissions, resolved_at}.
rbac_cache = cache_register(
    TwoLevelCache(
        "rbac",
        shared_ttl_seconds=RBAC_TTL_SECONDS,
        local_ttl_seconds=LOCAL_TTL_SECONDS,
        max_local_entries=50_000,
        decode=_decode,
        on_invalidate=_on_rbac_message,
    )
)


def rbac_cache_key(*, user_id: str, tenant_id: str) -> str:
    """`rbac:{user_id}:{tenant_id}`, with ':' (and '%') escaped in each part.

    Unescaped, ("a:b", "c") and ("a", "b:c") would share `rbac:a:b:c`; ordinary ids are unchanged.
    """
    return f"rbac:{_key_part(user_id)}:{_key_part(tenant_id)}"


def _key_part(value: str) -> str:
    return value.replace("%", "%25").replace(":", "%3A")


def rbac_permissions(*, user_id: str, tenant_id: str) -> frozenset[str]:
    """Permissions of `user_id` in `tenant_id` (ServiceUnavailable when they cannot be known)."""
    key = rbac_cache_key(user_id=user_id, tenant_id=tenant_id)
    entry = rbac_cache.get(key)
    if _valid_entry(entry, user_id=user_id, tenant_id=tenant_id):
        cache_hit("rbac")
        return frozenset(entry["permissions"])
    cache_miss("rbac")
    return _resolved(
        key, user_id=user_id, tenant_id=tenant_id, permissions=_resolve(user_id=user_id, tenant_id=tenant_id)
    )


async def rbac_permissions_async(*, user_id: str, tenant_id: str) -> frozenset[str]:
    """`rbac_permissions` for the event loop (Redis via redis.asyncio, the resolver in the
    gateway's bounded pool)."""
    from gateway.services.db_pool import in_db

    key = rbac_cache_key(user_id=user_id, tenant_id=tenant_id)
    entry = await rbac_cache.aget(key)
    if _valid_entry(entry, user_id=user_id, tenant_id=tenant_id):
        cache_hit("rbac")
        return frozenset(entry["permissions"])
    cache_miss("rbac")
    permissions = await in_db(_resolve, user_id=user_id, tenant_id=tenant_id)
    entry = _entry(user_id=user_id, tenant_id=tenant_id, permissions=permissions)
    await rbac_cache.aset(key, entry)
    return permissions


def _entry(*, user_id: str, tenant_id: str, permissions: frozenset[str]) -> dict:
    return {
        "user_id": user_id,
        "tenant_id": tenant_id,
        "permissions": sorted(permissions),
        "resolved_at": time.time(),
    }


def _resolved(key: str, *, user_id: str, tenant_id: str, permissions: frozenset[str]) -> frozenset[str]:
    rbac_cache.set(key, _entry(user_id=user_id, tenant_id=tenant_id, permissions=permissions))
    return permissions


def _valid_entry(entry: object, *, user_id: str, tenant_id: str) -> bool:
    """A well-formed entry of this very (user, tenant): anyone else's (a key collision, a key
    format of another version) is a miss, never their permissions."""
    return (
        isinstance(entry, dict)
        and entry.get("user_id") == user_id
        and entry.get("tenant_id") == tenant_id
        and isinstance(entry.get("permissions"), list)
        and all(isinstance(item, str) for item in entry["permissions"])
    )


def _resolve(*, user_id: str, tenant_id: str) -> frozenset[str]:
    url = settings.RBAC_RESOLVER_URL
    if not url:
        return frozenset()  # no resolver configured: only the token's own permissions claim grants
    try:
        response = requests.get(
            url,
            params={"user_id": user_id, "tenant_id": tenant_id},
            headers={"Accept": "application/json"},
            timeout=RESOLVER_TIMEOUT,
        )
        response.raise_for_status()
        body = response.json()
    except (requests.RequestException, ValueError) as exc:
        logger.warning("RBAC resolver failed for %s/%s: %s", user_id, tenant_id, exc)
        raise ServiceUnavailable("Permissions cannot be resolved right now; try again shortly.") from exc
    permissions = body.get("permissions") if isinstance(body, dict) else None
    if not isinstance(permissions, list) or not all(isinstance(item, str) for item in permissions):
        logger.warning("RBAC resolver answered without a permissions list for %s/%s", user_id, tenant_id)
        raise ServiceUnavailable("Permissions cannot be resolved right now; try again shortly.")
    return frozenset(permissions)


def rbac_invalidate(*, user_id: str | None = None, tenant_id: str | None = None) -> int:
    """Forget cached permissions (one user+tenant, or all) on every instance (`rbac.updated`).

    Returns how many Redis entries were deleted.
    """
    if (user_id is None) != (tenant_id is None):
        raise ValueError("give both user_id and tenant_id, or neither (all)")
    if user_id is None:
        deleted = shared_cache_call(lambda: shared_cache_delete_pattern("rbac:*"), 0)
        payload: dict = {"event": "rbac.updated", "all": True}
    else:
        key = rbac_cache_key(user_id=user_id, tenant_id=tenant_id or "")
        deleted = int(rbac_cache.shared_delete(key))
        payload = {"event": "rbac.updated", "user_id": user_id, "tenant_id": tenant_id}
    rbac_cache.publish(payload)  # this process now, the others after the transaction commits
    return deleted
