"""Revoked tokens: command, internal endpoint, introspection, DB record surviving Redis."""

from __future__ import annotations

import logging

import pytest
from django.core.cache import cache
from django.core.management import call_command

from common.errors import NotAuthenticated, ServiceUnavailable
from common.local_cache import reset_all_local_caches
from gateway.models import RevokedToken
from gateway.services.invalidation import invalidation_publish
from gateway.services.revocation import revoked_tokens_purge, token_revoke
from gateway.services.tokens import token_authenticate
from tests.support.redis_json import redis_json, redis_json_set  # noqa: F401

pytestmark = pytest.mark.django_db

INTERNAL_SECRET = "internal-secret-for-tests"


def _accepted(bearer: str) -> bool:
    try:
        token_authenticate(authorization=bearer)
    except NotAuthenticated as exc:
        assert exc.headers["WWW-Authenticate"] == 'Bearer error="invalid_token"'
        return False
    return True


def _redis_down(settings) -> None:
    from tests.support.servers import free_port

    settings.REDIS_URL = f"redis://127.0.0.1:{free_port()}/0"
    settings.CACHES = {"default": {**settings.CACHES["default"], "LOCATION": settings.REDIS_URL}}


def test_revoke_command_refuses_that_token_only(token_service, django_capture_on_commit_callbacks):
    revoked = token_service.bearer(jti="jti-revoked")
    other = token_service.bearer(jti="jti-other")
    assert _accepted(revoked)  # "not revoked" is now cached in Redis and this process

    with django_capture_on_commit_callbacks(execute=True):
        call_command("revoke_token", "jti-revoked", "--ttl", "600")

    assert not _accepted(revoked)
    assert _accepted(other)
    assert redis_json("revoked:jti-revoked") is True
    assert 0 < cache.ttl("revoked:jti-revoked") <= 180
    assert RevokedToken.objects.filter(jti="jti-revoked").exists()


def test_revocation_outlives_the_redis_entry(token_service, django_capture_on_commit_callbacks):
    bearer = token_service.bearer(jti="jti-1")
    with django_capture_on_commit_callbacks(execute=True):
        call_command("revoke_token", "jti-1")
    cache.clear()  # Redis restarted / entry expired after 180 s
    reset_all_local_caches()

    assert not _accepted(bearer)


def test_revocation_holds_with_redis_down(token_service, settings, django_capture_on_commit_callbacks):
    bearer = token_service.bearer(jti="jti-1")
    _redis_down(settings)
    # Recorded, but the revoker says Redis could not be updated (a stale "false" there would hide
    # the revocation once Redis is back): the caller is told to retry.
    with pytest.raises(ServiceUnavailable, match="Redis"), django_capture_on_commit_callbacks(execute=True):
        call_command("revoke_token", "jti-1")
    reset_all_local_caches()

    assert RevokedToken.objects.filter(jti="jti-1").exists()
    assert not _accepted(bearer)  # readers consult the database while Redis is down
    assert _accepted(token_service.bearer(jti="jti-2"))


def test_a_revocation_landing_between_the_db_read_and_the_cache_write_is_not_overwritten(
    token_service, django_capture_on_commit_callbacks
):
    from django.db import connection

    bearer = token_service.bearer(jti="jti-race")
    revoked_meanwhile: list[bool] = []

    def revoke_right_after_the_read(execute, sql, params, many, context):  # noqa: ANN001, ANN202
        result = execute(sql, params, many, context)
        if not revoked_meanwhile and RevokedToken._meta.db_table in sql:
            revoked_meanwhile.append(True)  # before revoking: its own queries pass through here
            with django_capture_on_commit_callbacks(execute=True):
                token_revoke(jti="jti-race")  # committed, "true" in Redis, message sent
        return result

    # when: a reader misses the cache, reads "not revoked" from the database, and a revocation
    # commits before it writes its answer to Redis
    with connection.execute_wrapper(revoke_right_after_the_read):
        in_flight_accepted = _accepted(bearer)
    reset_all_local_caches()  # another instance, or this one a second later

    # then: "true" stays (the reader's "false" is only written where nothing is cached), and the
    # reader itself, finding "true" there, refuses
    assert revoked_meanwhile
    assert redis_json("revoked:jti-race") is True
    assert not in_flight_accepted
    assert not _accepted(bearer)


def test_a_revoked_message_refuses_the_token_even_if_redis_still_says_false(
    token_service, django_capture_on_commit_callbacks
):
    bearer = token_service.bearer(jti="jti-msg")
    assert _accepted(bearer)  # "false" in Redis and in this process

    # A revocation whose Redis write did not happen, but whose message arrives.
    with django_capture_on_commit_callbacks(execute=True):
        invalidation_publish(kind="revoked", payload={"jti": "jti-msg"})

    assert redis_json("revoked:jti-msg") is False
    assert not _accepted(bearer)


def test_revoking_writes_redis_even_right_after_this_process_saw_a_redis_failure(
    token_service, django_capture_on_commit_callbacks
):
    from gateway.services.shared_cache import shared_cache_available, shared_cache_failed

    bearer = token_service.bearer(jti="jti-1")
    assert _accepted(bearer)  # "false" in Redis
    shared_cache_failed(ConnectionError("a blip"))  # the breaker skips Redis for the next 3 s
    assert not shared_cache_available()

    with django_capture_on_commit_callbacks(execute=True):
        call_command("revoke_token", "jti-1")

    assert redis_json("revoked:jti-1") is True
    reset_all_local_caches()
    assert not _accepted(bearer)


@pytest.mark.django_db(transaction=True)
def test_revoke_command_fails_when_redis_cannot_be_updated_but_keeps_the_record(settings):
    _redis_down(settings)

    from django.core.management.base import CommandError

    # no wrapping transaction: commits at once, and the command exits non-zero with the reason
    with pytest.raises(CommandError) as caught:
        call_command("revoke_token", "jti-1")

    assert "recorded" in str(caught.value) and "Redis" in str(caught.value)
    assert RevokedToken.objects.filter(jti="jti-1").exists()


@pytest.mark.django_db(transaction=True)
def test_internal_endpoint_answers_503_when_redis_cannot_be_updated_but_keeps_the_record(client, settings):
    settings.GATEWAY_INTERNAL_TOKEN = INTERNAL_SECRET
    _redis_down(settings)

    response = client.post(
        "/internal/revocations",
        {"jti": "jti-1", "ttl": 900},
        content_type="application/json",
        HTTP_AUTHORIZATION=f"Bearer {INTERNAL_SECRET}",
    )

    assert response.status_code == 503
    assert response["Content-Type"] == "application/problem+json"
    assert "Redis" in response.json()["detail"]
    assert RevokedToken.objects.filter(jti="jti-1").exists()


def test_a_miss_without_introspection_means_not_revoked(token_service, settings):
    settings.TOKEN_INTROSPECT_URL = ""
    token_service.revoke_via_introspection("jti-1")  # nobody asks

    assert _accepted(token_service.bearer(jti="jti-1"))
    assert token_service.introspection_count == 0
    assert redis_json("revoked:jti-1") is False


def test_introspection_inactive_token_is_refused_and_the_answer_cached(token_service):
    token_service.enable_introspection()
    token_service.revoke_via_introspection("jti-1")
    bearer = token_service.bearer(jti="jti-1")

    assert not _accepted(bearer)
    reset_all_local_caches()
    assert not _accepted(bearer)

    assert token_service.introspection_count == 1
    assert redis_json("revoked:jti-1") is True


def test_introspection_active_token_is_accepted_and_cached(token_service):
    token_service.enable_introspection()

    for _ in range(3):
        assert _accepted(token_service.bearer(jti="jti-1"))
        reset_all_local_caches()

    assert token_service.introspection_count == 1
    assert redis_json("revoked:jti-1") is False


def test_introspection_authenticates_the_gateway_with_http_basic(token_service):
    token_service.require_introspection_client("gatehouse", "s3:cr+t é")  # encoded per RFC 6749
    token_service.enable_introspection()  # the URL and the client credentials
    token_service.revoke_via_introspection("jti-1")

    assert not _accepted(token_service.bearer(jti="jti-1"))
    assert _accepted(token_service.bearer(jti="jti-2"))
    assert token_service.introspection_count == 2


def test_introspection_refusing_the_gateway_is_logged_as_a_configuration_error(
    token_service, settings, caplog
):
    token_service.require_introspection_client("gatehouse", "right")
    token_service.enable_introspection()
    settings.TOKEN_INTROSPECT_CLIENT_SECRET = "wrong"
    token_service.revoke_via_introspection("jti-1")

    with caplog.at_level(logging.WARNING, logger="gatehouse.auth.revocation"):
        # like an outage: not refused (database revocations still apply), not cached
        assert _accepted(token_service.bearer(jti="jti-1"))

    assert redis_json("revoked:jti-1") is None
    errors = [record for record in caplog.records if record.levelno == logging.ERROR]
    assert errors and "TOKEN_INTROSPECT_CLIENT_ID" in errors[0].getMessage()
    assert "401" in errors[0].getMessage()


def test_introspection_outage_does_not_refuse_valid_tokens_but_db_revocations_hold(
    token_service, settings, django_capture_on_commit_callbacks
):
    from tests.support.servers import free_port

    settings.TOKEN_INTROSPECT_URL = f"http://127.0.0.1:{free_port()}/introspect"
    with django_capture_on_commit_callbacks(execute=True):
        call_command("revoke_token", "jti-revoked")
    cache.clear()
    reset_all_local_caches()

    assert _accepted(token_service.bearer(jti="jti-ok"))
    assert redis_json("revoked:jti-ok") is None  # not cached: asked again next time
    assert not _accepted(token_service.bearer(jti="jti-revoked"))


def test_internal_endpoint_revokes_with_the_shared_secret(
    client, token_service, settings, django_capture_on_commit_callbacks
):
    settings.GATEWAY_INTERNAL_TOKEN = INTERNAL_SECRET
    bearer = token_service.bearer(jti="jti-pushed")
    assert _accepted(bearer)

    with django_capture_on_commit_callbacks(execute=True):
        response = client.post(
            "/internal/revocations",
            {"jti": "jti-pushed", "ttl": 900},
            content_type="application/json",
            HTTP_AUTHORIZATION=f"Bearer {INTERNAL_SECRET}",
        )

    assert response.status_code == 201
    assert response.json()["jti"] == "jti-pushed"
    assert not _accepted(bearer)


def test_internal_endpoint_accepts_expires_at(client, settings, django_capture_on_commit_callbacks):
    from datetime import timedelta

    from django.utils import timezone

    settings.GATEWAY_INTERNAL_TOKEN = INTERNAL_SECRET
    expires_at = (timezone.now() + timedelta(hours=5)).replace(microsecond=0)

    with django_capture_on_commit_callbacks(execute=True):
        response = client.post(
            "/internal/revocations",
            {"jti": "j", "expires_at": expires_at.isoformat()},
            content_type="application/json",
            HTTP_AUTHORIZATION=f"Bearer {INTERNAL_SECRET}",
        )

    assert response.status_code == 201
    # kept until the token's exp plus the clock leeway (a token is accepted that long)
    assert RevokedToken.objects.get(jti="j").expires_at == expires_at + timedelta(
        seconds=settings.JWT_LEEWAY_SECONDS
    )


@pytest.mark.parametrize(
    ("configured", "authorization", "challenge"),
    [
        (INTERNAL_SECRET, None, "Bearer"),
        (INTERNAL_SECRET, "Bearer wrong-secret", 'Bearer error="invalid_token"'),
        (INTERNAL_SECRET, f"Basic {INTERNAL_SECRET}", "Bearer"),
        ("", "Bearer ", "Bearer"),  # not configured: nobody gets in
    ],
)
def test_internal_endpoint_refuses_without_the_secret(client, settings, configured, authorization, challenge):
    settings.GATEWAY_INTERNAL_TOKEN = configured
    extra = {"HTTP_AUTHORIZATION": authorization} if authorization else {}

    response = client.post("/internal/revocations", {"jti": "x"}, content_type="application/json", **extra)

    assert response.status_code == 401
    assert response["Content-Type"] == "application/problem+json"
    assert response["WWW-Authenticate"] == challenge
    assert not RevokedToken.objects.exists()


def test_internal_endpoint_validates_its_body(client, settings):
    settings.GATEWAY_INTERNAL_TOKEN = INTERNAL_SECRET

    response = client.post(
        "/internal/revocations",
        {"ttl": 5},
        content_type="application/json",
        HTTP_AUTHORIZATION=f"Bearer {INTERNAL_SECRET}",
    )

    assert response.status_code == 400
    assert "jti" in response.json()["errors"]


def test_revoking_twice_keeps_the_later_expiry(django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=True):
        call_command("revoke_token", "j", "--ttl", "3600")
        first = RevokedToken.objects.get(jti="j").expires_at
        call_command("revoke_token", "j", "--ttl", "60")

    assert RevokedToken.objects.get(jti="j").expires_at == first
    assert RevokedToken.objects.count() == 1


def test_purge_drops_only_revocations_of_expired_tokens(django_capture_on_commit_callbacks):
    from datetime import timedelta

    from django.utils import timezone

    with django_capture_on_commit_callbacks(execute=True):
        call_command("revoke_token", "short", "--ttl", "60")
        call_command("revoke_token", "long", "--ttl", "7200")

    assert revoked_tokens_purge(now=timezone.now() + timedelta(minutes=5)) == 1
    assert list(RevokedToken.objects.values_list("jti", flat=True)) == ["long"]


def test_purge_command_keeps_live_revocations(capsys):
    from datetime import timedelta

    from django.utils import timezone

    RevokedToken.objects.create(jti="old", expires_at=timezone.now() - timedelta(seconds=1))
    RevokedToken.objects.create(jti="live", expires_at=timezone.now() + timedelta(hours=1))

    call_command("revoke_token", "--purge-expired")

    assert "purged 1 revocation(s)" in capsys.readouterr().out
    assert list(RevokedToken.objects.values_list("jti", flat=True)) == ["live"]


def test_revoke_command_needs_a_jti():
    from django.core.management.base import CommandError

    with pytest.raises(CommandError):
        call_command("revoke_token")


def test_hourly_purge_task_deletes_expired_revocations():
    from datetime import timedelta

    from django.utils import timezone

    from gateway.tasks import revoked_tokens_purge_task

    RevokedToken.objects.create(jti="old", expires_at=timezone.now() - timedelta(seconds=1))
    RevokedToken.objects.create(jti="live", expires_at=timezone.now() + timedelta(hours=1))

    assert revoked_tokens_purge_task.apply().get() == 1
    assert list(RevokedToken.objects.values_list("jti", flat=True)) == ["live"]
