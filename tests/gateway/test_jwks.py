"""JWKS: cached in Redis and per process, rotation, the kid-flood bound, token service outages."""

from __future__ import annotations

import uuid

import pytest
from django.core.cache import cache
from freezegun import freeze_time

from common.errors import NotAuthenticated
from common.local_cache import reset_all_local_caches
from gateway.services.jwks import jwks_refresh
from gateway.services.tokens import token_authenticate
from tests.support.redis_json import redis_json, redis_json_set  # noqa: F401

pytestmark = pytest.mark.django_db


def _ok(token_service, **claims) -> str:
    return token_authenticate(authorization=token_service.bearer(**claims)).user_id


def _refused(token: str) -> None:
    with pytest.raises(NotAuthenticated):
        token_authenticate(authorization=f"Bearer {token}")


def test_jwks_is_fetched_once_then_served_from_cache(token_service):
    for n in range(20):
        assert _ok(token_service, sub=f"user-{n}") == f"user-{n}"

    assert token_service.fetch_count == 1
    entry = redis_json("jwks:public_key")
    assert [key["kid"] for key in entry["keys"]] == [token_service.signing_key.kid]
    assert entry["fetched_at"] > 0
    assert 0 < cache.ttl("jwks:public_key") <= 600


def test_another_instance_reads_the_key_set_from_redis_not_the_token_service(token_service):
    _ok(token_service)
    reset_all_local_caches()  # a fresh process: only Redis is shared

    _ok(token_service)

    assert token_service.fetch_count == 1


def test_rotated_key_triggers_one_refetch_then_verifies(token_service):
    _ok(token_service)
    token_service.rotate()

    assert _ok(token_service, sub="after-rotation") == "after-rotation"
    assert _ok(token_service, sub="again") == "again"
    assert token_service.fetch_count == 2


def test_flood_of_random_kids_fetches_at_most_once_per_cooldown(token_service, settings):
    settings.JWT_JWKS_REFETCH_COOLDOWN_SECONDS = 30
    with freeze_time("2030-01-01 12:00:00") as clock:
        _ok(token_service)
        assert token_service.fetch_count == 1

        for _ in range(50):
            _refused(token_service.token(kid=uuid.uuid4().hex))
        assert token_service.fetch_count == 2  # one refetch in this cooldown window

        clock.tick(31)
        for _ in range(50):
            _refused(token_service.token(kid=uuid.uuid4().hex))
        assert token_service.fetch_count == 3

        clock.tick(10)
        reset_all_local_caches()  # other processes share the cooldown through Redis
        for _ in range(50):
            _refused(token_service.token(kid=uuid.uuid4().hex))
        assert token_service.fetch_count == 3
        assert _ok(token_service) == "user-1"  # the real key still verifies throughout


def test_a_genuine_rotation_right_after_a_flood_verifies_once_the_cooldown_passed(token_service):
    with freeze_time("2030-01-01 12:00:00") as clock:
        _ok(token_service)
        clock.tick(31)
        _refused(token_service.token(kid="random"))
        token_service.rotate()
        _refused(token_service.token())  # inside the cooldown: refused, no fetch
        assert token_service.fetch_count == 2

        clock.tick(31)
        assert _ok(token_service) == "user-1"
        assert token_service.fetch_count == 3


def test_token_service_down_with_a_warm_redis_cache_still_verifies(token_service):
    _ok(token_service)
    reset_all_local_caches()
    token_service.jwks_status = 503

    assert _ok(token_service, sub="still-works") == "still-works"


def test_token_service_and_redis_down_this_process_keeps_its_last_key_set(token_service, settings):
    from tests.support.servers import free_port

    _ok(token_service)
    token_service.jwks_status = 503
    settings.REDIS_URL = f"redis://127.0.0.1:{free_port()}/0"
    settings.CACHES = {"default": {**settings.CACHES["default"], "LOCATION": settings.REDIS_URL}}

    assert _ok(token_service, sub="still-works") == "still-works"


def test_no_key_set_at_all_is_503(token_service):
    from common.errors import ServiceUnavailable

    token_service.jwks_status = 503

    with pytest.raises(ServiceUnavailable):
        token_authenticate(authorization=token_service.bearer())


def test_jwks_rotated_refresh_drops_removed_keys(token_service):
    old_token = token_service.token()
    token_authenticate(authorization=f"Bearer {old_token}")  # verified and remembered
    token_service.rotate()  # the old key leaves the JWKS (e.g. it leaked)

    assert jwks_refresh() == 1

    _refused(old_token)
    assert _ok(token_service) == "user-1"


def test_kid_flood_with_redis_down_is_bounded_per_process(token_service, settings):
    from tests.support.servers import free_port

    with freeze_time("2030-01-01 12:00:00") as clock:
        _ok(token_service)
        settings.REDIS_URL = f"redis://127.0.0.1:{free_port()}/0"
        settings.CACHES = {"default": {**settings.CACHES["default"], "LOCATION": settings.REDIS_URL}}
        clock.tick(31)
        for _ in range(50):
            _refused(token_service.token(kid=uuid.uuid4().hex))
        assert token_service.fetch_count == 2


def test_internal_jwks_rotated_endpoint_refreshes_the_keys(client, token_service, settings):
    settings.GATEWAY_INTERNAL_TOKEN = "internal-secret"
    old_token = token_service.token()
    token_authenticate(authorization=f"Bearer {old_token}")
    token_service.rotate()

    response = client.post("/internal/jwks/rotated", HTTP_AUTHORIZATION="Bearer internal-secret")

    assert response.status_code == 202
    assert response.json() == {"event": "jwt.jwks.rotated", "keys": 1}
    assert token_service.fetch_count == 2
    assert [key["kid"] for key in redis_json("jwks:public_key")["keys"]] == [token_service.signing_key.kid]
    _refused(old_token)


def test_internal_jwks_rotated_endpoint_with_the_token_service_down_is_503(client, token_service, settings):
    settings.GATEWAY_INTERNAL_TOKEN = "internal-secret"
    token_service.jwks_status = 503

    response = client.post("/internal/jwks/rotated", HTTP_AUTHORIZATION="Bearer internal-secret")

    assert response.status_code == 503
    assert response["Content-Type"] == "application/problem+json"


def test_internal_jwks_rotated_endpoint_needs_the_secret(client, token_service, settings):
    settings.GATEWAY_INTERNAL_TOKEN = "internal-secret"

    response = client.post("/internal/jwks/rotated", HTTP_AUTHORIZATION=token_service.bearer())

    assert response.status_code == 401
    assert token_service.fetch_count == 0


def test_cold_start_with_the_token_service_down_fetches_at_most_once_per_backoff(token_service):
    from common.errors import ServiceUnavailable

    token_service.jwks_status = 503
    with freeze_time("2030-01-01 12:00:00") as clock:
        for _ in range(20):
            with pytest.raises(ServiceUnavailable):
                token_authenticate(authorization=token_service.bearer())
        assert token_service.fetch_count == 1

        clock.tick(6)  # past the short negative cache (a few seconds)
        token_service.jwks_status = 200
        assert _ok(token_service) == "user-1"
        assert token_service.fetch_count == 2


def test_unknown_kid_with_the_token_service_down_is_401_when_a_key_set_is_known(token_service):
    _ok(token_service)
    token_service.rotate()  # tokens now carry a kid this process has never seen
    token_service.jwks_status = 503

    with pytest.raises(NotAuthenticated) as caught:
        token_authenticate(authorization=token_service.bearer())

    assert caught.value.to_response().status_code == 401
    assert caught.value.headers["WWW-Authenticate"] == 'Bearer error="invalid_token"'
    assert token_service.fetch_count == 2  # the refetch was tried (and failed)
