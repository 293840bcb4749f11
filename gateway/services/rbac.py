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
from django.core.cache import cache

from common.errors import ServiceUnavailable
from common.local_cache import LocalTTLCache
from gateway.services.cache_stats import cache_hit, cache_miss
from gateway.services.shared_cache import shared_cache_call, shared_cache_delete_pattern

logger = logging.getLogger("gatehouse.auth.rbac")

RBAC_TTL_SECONDS = 300
# Messages drop entries at once; this bounds staleness when one is lost (Redis down).
LOCAL_TTL_SECONDS = 5.0
RESOLVER_TIMEOUT = (0.5, 2.0)

_local = LocalTTLCache("rbac", ttl_seconds=LOCAL_TTL_SECONDS, max_entries=50_000)
_subscribed = False


def rbac_cache_key(*, user_id: str, tenant_id: str) -> str:
    """`rbac:{user_id}:{tenant_id}`, with ':' (and '%') escaped in each part.

    Unescaped, ("a:b", "c") and ("a", "b:c") would share `rbac:a:b:c`; ordinary ids are unchanged.
    """
    return f"rbac:{_key_part(user_id)}:{_key_part(tenant_id)}"


def _key_part(value: str) -> str:
    return value.replace("%", "%25").replace(":", "%3A")


def rbac_permissions(*, user_id: str, tenant_id: str) -> frozenset[str]:
    """Permissions of `user_id` in `tenant_id` (ServiceUnavailable when they cannot be known)."""
    _ensure_subscribed()
    local_key = (user_id, tenant_id)
    permissions = _local.get(local_key)
    if permissions is not None:
        cache_hit("rbac")
        return permissions
    key = rbac_cache_key(user_id=user_id, tenant_id=tenant_id)
    entry = shared_cache_call(lambda: cache.get(key), None)
    if _valid_entry(entry, user_id=user_id, tenant_id=tenant_id):
        cache_hit("rbac")
        permissions = frozenset(entry["permissions"])
        _local.set(local_key, permissions)
        return permissions
    cache_miss("rbac")
    permissions = _resolve(user_id=user_id, tenant_id=tenant_id)
    entry = {
        "user_id": user_id,
        "tenant_id": tenant_id,
        "permissions": sorted(permissions),
        "resolved_at": time.time(),
    }
    shared_cache_call(lambda: cache.set(key, entry, RBAC_TTL_SECONDS), None)
    _local.set(local_key, permissions)
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
    from gateway.services.invalidation import invalidation_publish

    if (user_id is None) != (tenant_id is None):
        raise ValueError("give both user_id and tenant_id, or neither (all)")
    if user_id is None:
        deleted = shared_cache_call(lambda: shared_cache_delete_pattern("rbac:*"), 0)
        payload: dict = {"event": "rbac.updated", "all": True}
    else:
        key = rbac_cache_key(user_id=user_id, tenant_id=tenant_id or "")
        deleted = int(bool(shared_cache_call(lambda: cache.delete(key), False)))
        payload = {"event": "rbac.updated", "user_id": user_id, "tenant_id": tenant_id}
    _on_rbac_invalidated(payload)  # this process now, not only once a surrounding transaction commits
    invalidation_publish(kind="rbac", payload=payload)
    return deleted


def _on_rbac_invalidated(payload: dict) -> None:
    if payload.get("resync") or payload.get("all") or "user_id" not in payload:
        _local.clear()
    else:
        _local.delete((str(payload["user_id"]), str(payload.get("tenant_id") or "")))


def _ensure_subscribed() -> None:
    global _subscribed
    if _subscribed:
        return
    from gateway.services.invalidation import invalidation_subscribe

    invalidation_subscribe("rbac", _on_rbac_invalidated)
    _subscribed = True
