"""The development signing key: embedded mode's token source when no token service exists.

`manage.py dev_token` generates an ES256 (P-256) key pair once, under `VAR_DIR/dev_jwt_key.pem`
(mode 0600), and signs tokens with it; the project verifies them against its public key. Trusted
only when `JWT_JWKS_URL` is unset **and** `JWT_DEV_KEY_ENABLED` is true (default: true in embedded
mode, i.e. SQLite; false on PostgreSQL, so a deployment never trusts a key lying in
its var directory without being told). The algorithm is the key's (ES256), never the token's.
"""

from __future__ import annotations

import hashlib
import os
import threading
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from django.conf import settings
from jwt import PyJWK
from jwt.algorithms import ECAlgorithm

DEV_KEY_ALGORITHM = "ES256"
DEV_KEY_FILENAME = "dev_jwt_key.pem"

_lock = threading.Lock()
_loaded: dict[str, tuple[float, ec.EllipticCurvePrivateKey, PyJWK, str]] = {}


class DevKeyRefused(Exception):
    """dev_token cannot sign: a real token service is configured, or the dev key is disabled."""


def dev_key_path() -> Path:
    return Path(str(settings.VAR_DIR)) / DEV_KEY_FILENAME


def dev_key_trusted() -> bool:
    """Whether tokens signed by the dev key verify here (never with JWT_JWKS_URL set)."""
    return not settings.JWT_JWKS_URL and bool(settings.JWT_DEV_KEY_ENABLED)


def dev_key_refusal() -> str | None:
    """Why the dev key cannot be used here, or None."""
    if settings.JWT_JWKS_URL:
        return (
            "JWT_JWKS_URL is set: tokens come from that token service, and the development key is "
            "never trusted alongside it. Get a token from the token service instead."
        )
    if not settings.JWT_DEV_KEY_ENABLED:
        return (
            "The development key is disabled (JWT_DEV_KEY_ENABLED is false, the default on "
            "PostgreSQL). Set JWT_JWKS_URL, or JWT_DEV_KEY_ENABLED=true for development."
        )
    return None


def dev_key_ensure() -> tuple[ec.EllipticCurvePrivateKey, str]:
    """The private key and its kid, generating the pair on first use."""
    refusal = dev_key_refusal()
    if refusal:
        raise DevKeyRefused(refusal)
    path = dev_key_path()
    with _lock:
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            pem = ec.generate_private_key(ec.SECP256R1()).private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as handle:
                handle.write(pem)
    loaded = _load(path)
    assert loaded is not None
    return loaded[1], loaded[3]


def dev_public_key() -> tuple[PyJWK, str] | None:
    """(verification key, kid) when the dev key is trusted and exists, else None."""
    if not dev_key_trusted():
        return None
    loaded = _load(dev_key_path())
    return None if loaded is None else (loaded[2], loaded[3])


def _load(path: Path) -> tuple[float, ec.EllipticCurvePrivateKey, PyJWK, str] | None:
    try:
        mtime = path.stat().st_mtime
    except FileNotFoundError:
        return None
    cached = _loaded.get(str(path))
    if cached is not None and cached[0] == mtime:
        return cached
    private_key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    if not isinstance(private_key, ec.EllipticCurvePrivateKey):
        raise ValueError(f"{path} is not an EC private key")
    jwk = ECAlgorithm.to_jwk(private_key.public_key(), as_dict=True)
    kid = "dev-" + hashlib.sha256(f"{jwk['x']}.{jwk['y']}".encode()).hexdigest()[:16]
    public = PyJWK({**jwk, "kid": kid, "use": "sig", "alg": DEV_KEY_ALGORITHM})
    loaded = (mtime, private_key, public, kid)
    _loaded[str(path)] = loaded
    return loaded
