"""`manage.py dev_token` and the development key; /readyz and the 503 without any key source."""

from __future__ import annotations

import io
import json

import jwt
import pytest
import requests
from django.core.management import call_command
from django.core.management.base import CommandError

from common.errors import NotAuthenticated, ServiceUnavailable
from common.local_cache import reset_all_local_caches
from gateway.services.tokens import token_authenticate

pytestmark = pytest.mark.django_db


@pytest.fixture
def embedded_keys(settings, tmp_path):
    settings.JWT_JWKS_URL = ""
    settings.JWT_DEV_KEY_ENABLED = True
    settings.VAR_DIR = tmp_path
    reset_all_local_caches()
    return tmp_path


def _dev_token(*args: str) -> str:
    out = io.StringIO()
    call_command("dev_token", *args, stdout=out)
    line = out.getvalue().strip()
    assert line.startswith("Bearer ")
    return line


def test_dev_token_is_accepted_in_embedded_mode(embedded_keys):
    bearer = _dev_token("--sub", "u7", "--tenant", "acme", "--permission", "order.read", "--permission", "x")
    identity = token_authenticate(authorization=bearer)
    assert (identity.user_id, identity.tenant_id) == ("u7", "acme")
    assert identity.permissions == frozenset({"order.read", "x"})
    assert (embedded_keys / "dev_jwt_key.pem").stat().st_mode & 0o077 == 0  # private to its owner
    header = jwt.get_unverified_header(bearer.split()[1])
    assert header["alg"] == "ES256"


def test_the_dev_key_is_generated_once(embedded_keys):
    _dev_token()
    pem = (embedded_keys / "dev_jwt_key.pem").read_bytes()
    token_authenticate(authorization=_dev_token())
    assert (embedded_keys / "dev_jwt_key.pem").read_bytes() == pem


def test_dev_token_refuses_when_a_token_service_is_configured(embedded_keys, settings):
    settings.JWT_JWKS_URL = "http://127.0.0.1:9/jwks"
    with pytest.raises(CommandError, match="JWT_JWKS_URL is set"):
        call_command("dev_token")


def test_dev_tokens_are_never_accepted_when_jwks_url_is_set(embedded_keys, settings, http_server_factory):
    from tests.support.servers import Reply

    bearer = _dev_token()  # the dev key exists; then the project is pointed at a token service
    jwks = http_server_factory(
        lambda request: Reply(200, b'{"keys": []}', [("Content-Type", "application/json")])
    )
    settings.JWT_JWKS_URL = f"{jwks.url}/jwks"
    with pytest.raises((NotAuthenticated, ServiceUnavailable)):
        token_authenticate(authorization=bearer)


def test_alg_comes_from_the_key_not_the_token(embedded_keys):
    bearer = _dev_token()
    header, payload, _ = bearer.split()[1].split(".")
    forged = jwt.encode(jwt.decode(bearer.split()[1], options={"verify_signature": False}), "k", "HS256")
    with pytest.raises(NotAuthenticated):
        token_authenticate(authorization=f"Bearer {forged}")


def test_dev_token_validates_its_arguments(embedded_keys):
    for args in (["--ttl", "0"], ["--ttl", "-5"], ["--ttl", str(10**9)], ["--sub", " "]):
        with pytest.raises(CommandError):
            call_command("dev_token", *args)


def test_disabled_dev_key_is_refused_and_says_why(embedded_keys, settings):
    settings.JWT_DEV_KEY_ENABLED = False
    with pytest.raises(CommandError, match="JWT_DEV_KEY_ENABLED"):
        call_command("dev_token")


def test_no_key_source_is_a_plain_503_and_readyz_says_so(settings, tmp_path, client):
    settings.JWT_JWKS_URL = ""
    settings.JWT_DEV_KEY_ENABLED = False
    settings.VAR_DIR = tmp_path
    reset_all_local_caches()
    forged = jwt.encode({"sub": "u", "exp": 4_000_000_000}, "k", "HS256")
    with pytest.raises(ServiceUnavailable) as unavailable:
        token_authenticate(authorization=f"Bearer {forged}")
    assert "No token key source is configured" in str(unavailable.value.detail)
    ready = client.get("/readyz")
    assert ready.status_code == 200  # the database answers: degraded, not out of service
    assert "No token key source is configured" in ready.json()["checks"]["token_keys"]
    assert "token_keys" in ready.json()["degraded"]


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_the_running_server_accepts_a_dev_token(
    http_server_factory, gateway_process_factory, tmp_path, settings
):
    from tests.gateway.proxy_support import proxy_route
    from tests.support.servers import Reply

    settings.JWT_JWKS_URL = ""
    settings.JWT_DEV_KEY_ENABLED = True
    settings.VAR_DIR = tmp_path
    upstream = http_server_factory(lambda request: Reply(200, json.dumps(dict(request.headers)).encode()))
    proxy_route(upstream.url, path="/orders/**", methods=("GET",), auth_required=True)
    bearer = _dev_token("--sub", "u-live", "--permission", "order.read")
    gateway = gateway_process_factory(
        {"JWT_JWKS_URL": "", "JWT_DEV_KEY_ENABLED": "true", "GATEHOUSE_VAR_DIR": str(tmp_path)}
    )
    assert (
        requests.get(f"{gateway}/gw/orders/1", headers={"Authorization": bearer}, timeout=10).status_code
        == 200
    )
    assert requests.get(f"{gateway}/readyz", timeout=10).json()["checks"]["token_keys"].startswith("ok")
    # the same server pointed at a token service refuses the dev token
    other = gateway_process_factory(
        {
            "JWT_JWKS_URL": "http://127.0.0.1:9/jwks",
            "JWT_DEV_KEY_ENABLED": "true",
            "GATEHOUSE_VAR_DIR": str(tmp_path),
        }
    )
    assert requests.get(
        f"{other}/gw/orders/1", headers={"Authorization": bearer}, timeout=10
    ).status_code in (401, 503)
