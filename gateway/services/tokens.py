"""Bearer token verification (PyJWT + JWKS), shared by the gateway and the project's own APIs.

`token_authenticate` = parse the header → verify the signature and claims → check revocation →
`Identity`. Any failure is `NotAuthenticated` (401 with `WWW-Authenticate: Bearer …`).
"""

from __future__ import annotations

import hashlib
import logging
import math
import time
from typing import Any

import jwt
from django.conf import settings
from prometheus_client import Counter

from common.errors import NotAuthenticated, ServiceUnavailable
from gateway.services.headers import identity_value_is_safe
from gateway.services.jwks import JwksKeyNotFound, JwksUnavailable, jwks_signing_key
from gateway.services.revocation import token_is_revoked, token_is_revoked_async
from gateway.services.verified_tokens import VERIFIED_TTL_SECONDS, token_verified_cache_clear, verified_tokens
from gateway.types import Identity

logger = logging.getLogger("gatehouse.auth.tokens")

REQUIRED_CLAIMS = ("exp", "sub")
TIME_CLAIMS = ("exp", "nbf", "iat")

auth_rejections = Counter(
    "gateway_auth_rejections_total",
    "Bearer tokens refused with a 401, by reason (missing, malformed, unknown_key, expired, "
    "not_yet_valid, wrong_audience, wrong_issuer, missing_claim, invalid, revoked).",
    ["reason"],
)


def _denied(reason: str, detail: str, *, error: str | None = "invalid_token") -> NotAuthenticated:
    auth_rejections.labels(reason).inc()
    return NotAuthenticated(detail, error=error)


_verified = verified_tokens
__all__ = ["VERIFIED_TTL_SECONDS", "token_verified_cache_clear"]  # re-exported (older import path)


def bearer_token(*, authorization: str | None) -> str:
    """The token of an `Authorization: Bearer …` header (401 without an error code if absent)."""
    if not authorization:
        raise _denied("missing", "A bearer token is required.", error=None)
    scheme, _, token = authorization.strip().partition(" ")
    if scheme.lower() != "bearer":
        # RFC 6750 §3.1: an unsupported scheme is "no credentials", answered without an error code.
        raise _denied("missing", "A bearer token is required.", error=None)
    token = token.strip()
    if not token:
        raise _denied("malformed", "The bearer token is empty.")
    return token


def token_verify(*, token: str) -> dict[str, Any]:
    """The verified claims of `token`, or NotAuthenticated. Does not check revocation."""
    cache_key = _verified_cache_key(token)
    claims = _verified_claims(token)
    if claims is not None:
        return claims
    claims = _verify_uncached(token)
    remaining = float(claims["exp"]) - time.time()
    if remaining > 0:
        _verified.set(cache_key, claims, ttl_seconds=min(VERIFIED_TTL_SECONDS, remaining))
    return claims


def _verified_cache_key(token: str) -> tuple:
    return (hashlib.sha256(token.encode()).digest(), settings.JWT_ISSUER, settings.JWT_AUDIENCE)


def _verified_claims(token: str) -> dict[str, Any] | None:
    """Claims of a token this process verified recently (still unexpired), else None."""
    claims = _verified.get(_verified_cache_key(token))
    if claims is not None and claims["exp"] > time.time():
        return claims
    return None


def _verify_uncached(token: str) -> dict[str, Any]:
    try:
        header = jwt.get_unverified_header(token)
    except jwt.InvalidTokenError as exc:
        raise _denied("malformed", "The token is malformed.") from exc
    kid = header.get("kid")
    if kid is not None and not isinstance(kid, str):
        raise _denied("malformed", "The token's kid is invalid.")
    try:
        key = jwks_signing_key(kid=kid)
    except JwksKeyNotFound as exc:
        raise _denied("unknown_key", f"No key to verify the token: {exc}") from exc
    except JwksUnavailable as exc:
        # Not the client's fault: the keys cannot be had. 503, never an allow.
        from gateway.services.jwks import NO_KEY_SOURCE

        if str(exc) == NO_KEY_SOURCE:
            raise ServiceUnavailable(NO_KEY_SOURCE) from exc
        raise ServiceUnavailable("Token keys are unavailable; try again shortly.") from exc
    # The algorithm is the key's (PyJWK from the JWKS), never the token header's: a header saying
    # HS256 or none fails PyJWT's check against `algorithms`.
    issuer = settings.JWT_ISSUER or None
    audience = settings.JWT_AUDIENCE or None
    try:
        claims = jwt.decode(
            token,
            key=key,
            algorithms=[key.algorithm_name],
            issuer=issuer,
            audience=audience,
            leeway=settings.JWT_LEEWAY_SECONDS,
            options={
                "require": [*REQUIRED_CLAIMS, *(["iss"] if issuer else []), *(["aud"] if audience else [])],
                "verify_aud": audience is not None,
                "verify_iss": issuer is not None,
            },
        )
    except jwt.ExpiredSignatureError as exc:
        raise _denied("expired", "The token has expired.") from exc
    except jwt.ImmatureSignatureError as exc:
        raise _denied("not_yet_valid", "The token is not valid yet.") from exc
    except jwt.InvalidAudienceError as exc:
        raise _denied("wrong_audience", "The token is for another audience.") from exc
    except jwt.InvalidIssuerError as exc:
        raise _denied("wrong_issuer", "The token is from another issuer.") from exc
    except jwt.MissingRequiredClaimError as exc:
        raise _denied("missing_claim", f"The token lacks the {exc.claim!r} claim.") from exc
    except jwt.InvalidTokenError as exc:
        raise _denied("invalid", "The token is invalid.") from exc
    # PyJWT compares int(claim), so "9999999999" (a string) or true passes its checks; the claims
    # must be JSON numbers (RFC 7519 NumericDate) before this module compares them with the clock.
    for name in TIME_CLAIMS:
        if name in claims and not _is_numeric_date(claims[name]):
            raise _denied("invalid", f"The token's {name!r} claim is not a number.")
    # A token may not outlive JWT_MAX_TOKEN_LIFETIME_SECONDS from now: revocations known only by
    # jti are kept that long, and an exp of 1e308 would make a revocation's lifetime unbounded.
    if not math.isfinite(claims["exp"]) or claims["exp"] > time.time() + max_token_lifetime_seconds():
        raise _denied("invalid", "The token's expiry is further away than this gateway accepts.")
    if not isinstance(claims.get("sub"), str) or not claims["sub"]:
        raise _denied("missing_claim", "The token's subject is invalid.")
    tenant_id = claims.get("tenant_id")
    if tenant_id is not None and not isinstance(tenant_id, str | int):
        raise _denied("invalid", "The token's tenant_id is invalid.")
    if "permissions" in claims and _claim_permissions(claims["permissions"]) is None:
        raise _denied("invalid", "The token's permissions claim is invalid.")
    # Identity values travel to upstreams as header values exactly as signed (X-User-ID,
    # X-Tenant-ID, X-User-Permissions): one that cannot (non-ASCII, CR/LF, a comma…) is refused.
    values = [claims["sub"], *([] if tenant_id is None else [str(tenant_id)])]
    values += _claim_permissions(claims["permissions"]) if "permissions" in claims else ()
    if not all(identity_value_is_safe(value=value) for value in values):
        raise _denied("invalid", "The token's sub, tenant_id or permissions hold unsafe characters.")
    return claims


def max_token_lifetime_seconds() -> int:
    """How far away a token's `exp` may be (the setting plus the clock leeway)."""
    return int(settings.JWT_MAX_TOKEN_LIFETIME_SECONDS) + int(settings.JWT_LEEWAY_SECONDS)


def _is_numeric_date(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _claim_permissions(value: Any) -> frozenset[str] | None:
    """A list of strings, or one space-separated string (OAuth `scope` style); else None."""
    if isinstance(value, str):
        return frozenset(value.split())
    if isinstance(value, list) and all(isinstance(item, str) for item in value):
        return frozenset(value)
    return None


def identity_from_claims(claims: dict[str, Any]) -> Identity:
    permissions = _claim_permissions(claims["permissions"]) if "permissions" in claims else None
    tenant_id = claims.get("tenant_id")
    return Identity(
        user_id=claims["sub"],
        tenant_id="" if tenant_id is None else str(tenant_id),
        jti=str(claims.get("jti") or ""),
        permissions=permissions or frozenset(),
        claims=claims,
    )


def token_authenticate(*, authorization: str | None) -> Identity:
    """Verified, unrevoked identity of an `Authorization` header, or NotAuthenticated (401).

    Permissions are those of the token's `permissions` claim (RBAC resolution is the gateway's,
    see `gateway.services.auth.request_identity`).
    """
    token = bearer_token(authorization=authorization)
    claims = token_verify(token=token)
    jti = claims.get("jti")
    if jti is not None and (not isinstance(jti, str) or not jti):
        raise _denied("invalid", "The token's jti is invalid.")
    if jti and token_is_revoked(jti=jti, token=token, expires_at=float(claims["exp"])):
        raise _denied("revoked", "The token has been revoked.")
    return identity_from_claims(claims)


async def token_authenticate_async(*, authorization: str | None) -> Identity:
    """`token_authenticate` for the event loop: a signature this process verified recently is
    checked inline (a dict look-up); a new one (RS256 ~0.2 ms, maybe a JWKS fetch) is verified in
    the gateway's bounded pool (gateway/services/db_pool.py); revocation through
    `token_is_revoked_async`."""
    from gateway.services.db_pool import in_db

    token = bearer_token(authorization=authorization)
    claims = _verified_claims(token)
    if claims is None:
        claims = await in_db(token_verify, token=token)
    jti = claims.get("jti")
    if jti is not None and (not isinstance(jti, str) or not jti):
        raise _denied("invalid", "The token's jti is invalid.")
    if jti and await token_is_revoked_async(jti=jti, token=token, expires_at=float(claims["exp"])):
        raise _denied("revoked", "The token has been revoked.")
    return identity_from_claims(claims)
