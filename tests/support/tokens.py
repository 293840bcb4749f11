"""A real token service and RBAC resolver for tests, both HTTP servers on 127.0.0.1.

`token_service` serves a JWKS generated here with `cryptography` (RS256 by default, ES256 on
request), counts JWKS fetches, rotates keys, answers RFC 7662 introspection, signs tokens, and
points `JWT_JWKS_URL` / `JWT_ISSUER` / `JWT_AUDIENCE` at itself through pytest-django's
`settings`. Typical use:

    def test_orders(client, token_service):
        response = client.get("/api/orders", **token_service.auth_header(sub="u-1"))

`rbac_resolver` answers `GET ?user_id=&tenant_id=` with `{"permissions": [...]}` and sets
`RBAC_RESOLVER_URL`. For a gateway subprocess (`gateway_process_factory`), pass
`token_service.env | rbac_resolver.env` as its extra environment: settings overrides made in the
test process do not reach other processes.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import threading
import time
import uuid
from typing import Any
from urllib.parse import parse_qs, unquote_plus, urlsplit

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

from tests.support.servers import HttpServer, RecordedRequest, Reply

ISSUER = "https://tokens.gatehouse.test"
AUDIENCE = "gatehouse"


def _new_rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


class SigningKey:
    def __init__(self, *, kid: str, algorithm: str, private_key: Any) -> None:
        self.kid = kid
        self.algorithm = algorithm
        self.private_key = private_key
        public_key = private_key.public_key()
        converter = RSAAlgorithm if algorithm == "RS256" else ECAlgorithm
        self.jwk: dict[str, Any] = {
            **converter.to_jwk(public_key, as_dict=True),
            "kid": kid,
            "use": "sig",
            "alg": algorithm,
        }
        self.public_pem = public_key.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )


class TokenService:
    def __init__(self, server: HttpServer, settings: Any) -> None:
        self._lock = threading.Lock()
        self._settings = settings
        self.keys: list[SigningKey] = [self._rsa_key()]
        self.signing_key = self.keys[0]
        self.extra_jwks: list[dict[str, Any]] = []  # raw JWKs served as-is (e.g. an "oct" key)
        self.fetch_count = 0
        self.introspection_count = 0
        self.inactive_jtis: set[str] = set()
        # (client_id, client_secret) introspection demands (HTTP Basic), or None: anyone may ask.
        self.introspection_client: tuple[str, str] | None = None
        self.jwks_status = 200  # set to 503 to make the JWKS endpoint fail
        self.server = server
        server.requests.clear()
        server.handler = self._handle
        self.url = self.server.url
        self.jwks_url = f"{self.url}/jwks"
        self.introspect_url = f"{self.url}/introspect"
        self.issuer = ISSUER
        self.audience = AUDIENCE
        settings.JWT_JWKS_URL = self.jwks_url
        settings.JWT_ISSUER = ISSUER
        settings.JWT_AUDIENCE = AUDIENCE

    # --- keys ---------------------------------------------------------------------------
    def _rsa_key(self) -> SigningKey:
        private_key = _new_rsa_key()
        return SigningKey(kid=f"rsa-{uuid.uuid4().hex[:12]}", algorithm="RS256", private_key=private_key)

    def add_es256_key(self, *, make_current: bool = True) -> SigningKey:
        key = SigningKey(
            kid=f"ec-{uuid.uuid4().hex[:12]}",
            algorithm="ES256",
            private_key=ec.generate_private_key(ec.SECP256R1()),
        )
        with self._lock:
            self.keys.append(key)
            if make_current:
                self.signing_key = key
        return key

    def add_rsa_key(self, *, make_current: bool = True) -> SigningKey:
        key = self._rsa_key()
        with self._lock:
            self.keys.append(key)
            if make_current:
                self.signing_key = key
        return key

    def rotate(self, *, keep_old: bool = False) -> SigningKey:
        """A new RS256 signing key; the old ones leave the JWKS unless keep_old."""
        key = self._rsa_key()
        with self._lock:
            self.keys = [*self.keys, key] if keep_old else [key]
            self.signing_key = key
        return key

    def jwks(self) -> dict[str, Any]:
        with self._lock:
            return {"keys": [key.jwk for key in self.keys] + list(self.extra_jwks)}

    # --- tokens -------------------------------------------------------------------------
    def claims(
        self,
        sub: str | None = "user-1",
        tenant_id: str | None = "t-1",
        permissions: list[str] | None = None,
        jti: str | None = None,
        *,
        expires_in: int = 300,
        **overrides: Any,
    ) -> dict[str, Any]:
        now = int(time.time())
        claims: dict[str, Any] = {
            "iss": self.issuer,
            "aud": self.audience,
            "sub": sub,
            "tenant_id": tenant_id,
            "jti": jti or str(uuid.uuid4()),
            "iat": now,
            "nbf": now,
            "exp": now + expires_in,
        }
        if permissions is not None:
            claims["permissions"] = list(permissions)
        claims.update(overrides)
        return {name: value for name, value in claims.items() if value is not None}  # None drops

    def token(
        self,
        sub: str | None = "user-1",
        tenant_id: str | None = "t-1",
        permissions: list[str] | None = None,
        jti: str | None = None,
        *,
        key: SigningKey | None = None,
        kid: str | None | bool = True,
        headers: dict[str, Any] | None = None,
        expires_in: int = 300,
        **claim_overrides: Any,
    ) -> str:
        """A signed token. `kid=True` puts the key's kid, a string overrides it, None omits it.

        A claim passed as None is left out (e.g. `sub=None` for a token without a subject).
        """
        signing_key = key or self.signing_key
        claims = self.claims(sub, tenant_id, permissions, jti, expires_in=expires_in, **claim_overrides)
        header: dict[str, Any] = {}
        if kid is True:
            header["kid"] = signing_key.kid
        elif isinstance(kid, str):
            header["kid"] = kid
        header.update(headers or {})
        return jwt.encode(claims, signing_key.private_key, algorithm=signing_key.algorithm, headers=header)

    def auth_header(self, *args: Any, **kwargs: Any) -> dict[str, str]:
        """`{"HTTP_AUTHORIZATION": "Bearer …"}` for Django's test client."""
        return {"HTTP_AUTHORIZATION": f"Bearer {self.token(*args, **kwargs)}"}

    def bearer(self, *args: Any, **kwargs: Any) -> str:
        """`Bearer …`, the Authorization header value (for requests / urllib3 callers)."""
        return f"Bearer {self.token(*args, **kwargs)}"

    # --- forged tokens (attacks the gateway must refuse) ---------------------------------
    def forge_alg_none(self, **claims: Any) -> str:
        header = {"alg": "none", "typ": "JWT", "kid": self.signing_key.kid}
        return f"{_b64(header)}.{_b64(self.claims(**claims))}."

    def forge_hs256_with_public_key(self, **claims: Any) -> str:
        """The algorithm-confusion attack: HMAC keyed with the server's public RSA key."""
        header = {"alg": "HS256", "typ": "JWT", "kid": self.signing_key.kid}
        signing_input = f"{_b64(header)}.{_b64(self.claims(**claims))}"
        signature = hmac.new(self.signing_key.public_pem, signing_input.encode(), hashlib.sha256).digest()
        return f"{signing_input}.{_b64_bytes(signature)}"

    # --- introspection ------------------------------------------------------------------
    def revoke_via_introspection(self, jti: str) -> None:
        """Introspection answers `active: false` for this jti from now on.

        The gateway only asks when `TOKEN_INTROSPECT_URL` is set: call `enable_introspection()`.
        """
        with self._lock:
            self.inactive_jtis.add(jti)

    def enable_introspection(self) -> None:
        """Point `TOKEN_INTROSPECT_URL` (and the client credentials, when required) at this service."""
        self._settings.TOKEN_INTROSPECT_URL = self.introspect_url
        client_id, client_secret = self.introspection_client or ("", "")
        self._settings.TOKEN_INTROSPECT_CLIENT_ID = client_id
        self._settings.TOKEN_INTROSPECT_CLIENT_SECRET = client_secret

    def require_introspection_client(self, client_id: str, client_secret: str) -> None:
        """Introspection answers 401 unless the caller authenticates as this client (HTTP Basic,
        RFC 6749 §2.3.1: both parts form-urlencoded before base64). Call before `enable_introspection`."""
        with self._lock:
            self.introspection_client = (client_id, client_secret)

    def _introspection_client_ok(self, request: RecordedRequest) -> bool:
        with self._lock:
            expected = self.introspection_client
        if expected is None:
            return True
        scheme, _, encoded = (request.header("Authorization") or "").partition(" ")
        if scheme.lower() != "basic":
            return False
        try:
            client_id, _, client_secret = base64.b64decode(encoded, validate=True).decode().partition(":")
        except (ValueError, UnicodeDecodeError):
            return False
        return (unquote_plus(client_id), unquote_plus(client_secret)) == expected

    @property
    def env(self) -> dict[str, str]:
        """Environment for a gateway subprocess pointed at this token service."""
        return {
            "JWT_JWKS_URL": self.jwks_url,
            "JWT_ISSUER": self.issuer,
            "JWT_AUDIENCE": self.audience,
        }

    # --- HTTP ---------------------------------------------------------------------------
    def _handle(self, request: RecordedRequest) -> Reply:
        path = urlsplit(request.path).path
        if request.method == "GET" and path == "/jwks":
            with self._lock:
                self.fetch_count += 1
                status = self.jwks_status
            if status != 200:
                return Reply(status, b'{"error":"unavailable"}', [("Content-Type", "application/json")])
            return _json_reply(self.jwks())
        if request.method == "POST" and path == "/introspect":
            with self._lock:
                self.introspection_count += 1
            if not self._introspection_client_ok(request):
                return Reply(
                    401,
                    b'{"error":"invalid_client"}',
                    [("Content-Type", "application/json"), ("WWW-Authenticate", 'Basic realm="tokens"')],
                )
            form = parse_qs(request.body.decode())
            token = (form.get("token") or [""])[0]
            try:
                claims = jwt.decode(token, options={"verify_signature": False})
            except jwt.InvalidTokenError:
                return _json_reply({"active": False})
            active = claims.get("jti") not in self.inactive_jtis and claims.get("exp", 0) > time.time()
            return _json_reply({"active": active, **({"jti": claims.get("jti")} if active else {})})
        return Reply(404, b"not found")


class RbacResolver:
    def __init__(self, server: HttpServer, settings: Any) -> None:
        self._lock = threading.Lock()
        self.permissions: dict[tuple[str, str], list[str]] = {}
        self.default_permissions: list[str] = []
        self.calls: list[tuple[str, str]] = []
        self.status = 200
        self.server = server
        server.requests.clear()
        server.handler = self._handle
        self.url = f"{self.server.url}/permissions"
        settings.RBAC_RESOLVER_URL = self.url

    def set(self, user_id: str, tenant_id: str, permissions: list[str]) -> None:
        with self._lock:
            self.permissions[(user_id, tenant_id)] = list(permissions)

    def fail(self, status: int = 503) -> None:
        self.status = status

    def recover(self) -> None:
        self.status = 200

    @property
    def call_count(self) -> int:
        return len(self.calls)

    @property
    def env(self) -> dict[str, str]:
        return {"RBAC_RESOLVER_URL": self.url}

    def _handle(self, request: RecordedRequest) -> Reply:
        query = parse_qs(urlsplit(request.path).query)
        user_id = (query.get("user_id") or [""])[0]
        tenant_id = (query.get("tenant_id") or [""])[0]
        with self._lock:
            self.calls.append((user_id, tenant_id))
            if self.status != 200:
                return Reply(self.status, b'{"error":"unavailable"}', [("Content-Type", "application/json")])
            permissions = self.permissions.get((user_id, tenant_id), self.default_permissions)
        return _json_reply({"permissions": permissions})


def _json_reply(body: Any) -> Reply:
    return Reply(200, json.dumps(body).encode(), [("Content-Type", "application/json")])


def _b64_bytes(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _b64(obj: Any) -> str:
    return _b64_bytes(json.dumps(obj, separators=(",", ":")).encode())


def _not_found(request: RecordedRequest) -> Reply:
    return Reply(404, b"no test is using this server")


# One server each for the whole process (daemon threads), handed to a fresh TokenService /
# RbacResolver per test: stopping a server costs ~0.5 s (serve_forever's poll interval) per test.
_shared_servers: dict[str, HttpServer] = {}


def _shared_server(name: str) -> HttpServer:
    if name not in _shared_servers:
        _shared_servers[name] = HttpServer(_not_found)
    return _shared_servers[name]


@pytest.fixture
def token_service(settings):
    server = _shared_server("token-service")
    service = TokenService(server, settings)
    yield service
    server.handler = _not_found


@pytest.fixture
def rbac_resolver(settings):
    server = _shared_server("rbac-resolver")
    resolver = RbacResolver(server, settings)
    yield resolver
    server.handler = _not_found
