"""Tokens whose signature this process has verified recently (shared by tokens and jwks, so
neither imports the other to clear it on a key rotation).

Signature checks are the costliest step (~0.1-0.5 ms); a token already verified by this process
is trusted again for a few seconds, never past its `exp`. Keyed by a hash, so raw tokens are not
kept in memory. Revocation and RBAC are still checked on every request.
"""

from __future__ import annotations

from common.local_cache import LocalTTLCache

VERIFIED_TTL_SECONDS = 30.0
verified_tokens = LocalTTLCache("verified-tokens", ttl_seconds=VERIFIED_TTL_SECONDS, max_entries=10_000)


def token_verified_cache_clear() -> None:
    verified_tokens.clear()
