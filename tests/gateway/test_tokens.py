"""Token verification: what passes, and every way a token must fail with a 401."""

from __future__ import annotations

import pytest
from freezegun import freeze_time

from common.errors import NotAuthenticated
from gateway.services.tokens import token_authenticate

pytestmark = pytest.mark.django_db


def _refused(authorization: str | None) -> NotAuthenticated:
    with pytest.raises(NotAuthenticated) as caught:
        token_authenticate(authorization=authorization)
    response = caught.value.to_response()
    assert response.status_code == 401
    assert response["Content-Type"] == "application/problem+json"
    return caught.value


def test_valid_rs256_token_gives_the_identity_of_its_claims(token_service):
    token = token_service.token(sub="user-7", tenant_id="acme", permissions=["order.read"], jti="j-1")

    identity = token_authenticate(authorization=f"Bearer {token}")

    assert identity.user_id == "user-7"
    assert identity.tenant_id == "acme"
    assert identity.jti == "j-1"
    assert identity.permissions == frozenset({"order.read"})


def test_es256_key_from_the_jwks_verifies(token_service):
    token_service.add_es256_key()

    identity = token_authenticate(authorization=token_service.bearer(sub="ec-user"))

    assert identity.user_id == "ec-user"


def test_scheme_is_case_insensitive(token_service):
    identity = token_authenticate(authorization=f"bearer {token_service.token()}")
    assert identity.user_id == "user-1"


@pytest.mark.parametrize("authorization", [None, "", "Basic dXNlcjpwYXNz"])
def test_missing_credentials_get_a_bare_bearer_challenge(token_service, authorization):
    error = _refused(authorization)
    assert error.headers["WWW-Authenticate"] == "Bearer"


def _invalid(token_service, token: str) -> None:
    error = _refused(f"Bearer {token}")
    assert error.headers["WWW-Authenticate"] == 'Bearer error="invalid_token"'


def test_alg_none_is_refused(token_service):
    _invalid(token_service, token_service.forge_alg_none())


def test_hs256_signed_with_the_public_key_is_refused(token_service):
    _invalid(token_service, token_service.forge_hs256_with_public_key())


def test_wrong_signature_is_refused(token_service, http_server_factory, settings):
    from tests.support.tokens import TokenService

    other = TokenService(http_server_factory(), settings)  # another key pair, same kid as ours
    forged = other.token(kid=token_service.signing_key.kid)
    settings.JWT_JWKS_URL = token_service.jwks_url  # the gateway trusts the first service only

    _invalid(token_service, forged)


def test_tampered_payload_is_refused(token_service):
    header, payload, signature = token_service.token(sub="user-1").split(".")
    other_payload = token_service.token(sub="admin").split(".")[1]

    _invalid(token_service, f"{header}.{other_payload}.{signature}")


def test_missing_sub_is_refused(token_service):
    _invalid(token_service, token_service.token(sub=None))


def test_missing_exp_is_refused(token_service):
    _invalid(token_service, token_service.token(exp=None))


def test_expired_token_is_refused_after_the_leeway(token_service, settings):
    settings.JWT_LEEWAY_SECONDS = 60
    with freeze_time("2030-01-01 12:00:00") as clock:
        token = token_service.token(expires_in=300)
        clock.tick(300 + 59)
        assert token_authenticate(authorization=f"Bearer {token}").user_id == "user-1"
        clock.tick(2)
        _invalid(token_service, token)


def test_token_from_the_future_is_refused(token_service, settings):
    settings.JWT_LEEWAY_SECONDS = 10
    with freeze_time("2030-01-01 12:00:00"):
        future = 1893499200 + 120  # two minutes ahead of the frozen clock
        _invalid(token_service, token_service.token(nbf=future))
        _invalid(token_service, token_service.token(iat=future))


def test_other_issuer_is_refused(token_service):
    _invalid(token_service, token_service.token(iss="https://evil.example"))


def test_other_audience_is_refused(token_service):
    _invalid(token_service, token_service.token(aud="another-api"))


def test_issuer_and_audience_are_not_checked_when_not_configured(token_service, settings):
    settings.JWT_ISSUER = ""
    settings.JWT_AUDIENCE = ""

    identity = token_authenticate(authorization=token_service.bearer(iss=None, aud=None))

    assert identity.user_id == "user-1"


@pytest.mark.parametrize("garbage", ["x", "a.b.c", "eyJhbGciOiJSUzI1NiJ9..", "Bearer"])
def test_garbage_is_refused(token_service, garbage):
    _invalid(token_service, garbage)


def test_kid_is_required_when_the_jwks_has_several_keys(token_service):
    token_service.add_rsa_key(make_current=False)

    _invalid(token_service, token_service.token(kid=None))


def test_kid_may_be_omitted_when_the_jwks_has_one_key(token_service):
    identity = token_authenticate(authorization=token_service.bearer(kid=None))
    assert identity.user_id == "user-1"


def test_token_signed_by_an_hmac_jwk_is_never_accepted(token_service):
    # A JWKS entry of type "oct" (shared secret) must not become a verification key.
    token_service.extra_jwks.append({"kty": "oct", "k": "c2VjcmV0", "kid": "hmac", "alg": "HS256"})
    import jwt

    forged = jwt.encode(
        {"sub": "x", "exp": 4102444800}, b"s" * 32, algorithm="HS256", headers={"kid": "hmac"}
    )

    _invalid(token_service, forged)


def test_metrics_count_rejections_by_reason_and_jwks_fetches(client, token_service):
    import re

    def figure(text: str, name: str, labels: str) -> float:
        found = re.search(rf"^{name}\{{{labels}\}} (\S+)$", text, re.MULTILINE)
        return float(found.group(1)) if found else 0.0

    before = client.get("/metrics").content.decode()
    _refused(token_service.bearer(expires_in=-600))
    _refused(token_service.bearer(expires_in=-600))
    after = client.get("/metrics").content.decode()

    name, labels = "gateway_auth_rejections_total", 'reason="expired"'
    assert figure(after, name, labels) - figure(before, name, labels) == 2
    fetches = 'outcome="ok",reason="cold"'
    assert figure(after, "gateway_jwks_fetches_total", fetches) >= 1


@pytest.mark.parametrize(
    ("claim", "value"),
    [("exp", "9999999999"), ("nbf", "1000000000"), ("iat", "1000000000"), ("nbf", True)],
)
def test_time_claims_that_are_not_numbers_are_refused(token_service, claim, value):
    # PyJWT accepts anything int() takes ("9999999999"); a later comparison with a float would 500.
    token = token_service.token(**{claim: value})

    for _ in range(2):  # the second time would come from the verified-token cache
        _invalid(token_service, token)
