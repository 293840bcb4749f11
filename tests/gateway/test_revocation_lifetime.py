"""Revocations live as long as the tokens they refuse; token lifetimes are capped."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import jwt
import pytest
from django.core.management import call_command
from django.utils import timezone
from freezegun import freeze_time

from common.errors import NotAuthenticated
from common.local_cache import reset_all_local_caches
from gateway.models import RevokedToken
from gateway.services.revocation import revoked_tokens_purge, token_revoke
from gateway.services.tokens import token_authenticate

pytestmark = pytest.mark.django_db


def test_a_revocation_by_jti_outlives_any_token_the_gateway_accepts(token_service, settings):
    settings.JWT_MAX_TOKEN_LIFETIME_SECONDS = 7 * 24 * 3600
    settings.JWT_LEEWAY_SECONDS = 60
    before = timezone.now()
    call_command("revoke_token", "jti-long")
    row = RevokedToken.objects.get(jti="jti-long")
    assert row.expires_at >= before + timedelta(days=7, seconds=60)
    # a purge a day later (the old default lifetime) keeps it
    assert revoked_tokens_purge(now=before + timedelta(days=2)) == 0
    assert RevokedToken.objects.filter(jti="jti-long").exists()


def test_a_revocation_by_token_is_kept_until_its_exp(
    token_service, settings, django_capture_on_commit_callbacks
):
    settings.JWT_MAX_TOKEN_LIFETIME_SECONDS = 3 * 24 * 3600
    token = token_service.token(jti="jti-by-token", expires_in=2 * 24 * 3600)
    with django_capture_on_commit_callbacks(execute=True):
        call_command("revoke_token", "--token", token)
    row = RevokedToken.objects.get(jti="jti-by-token")
    exp = datetime.fromtimestamp(jwt.decode(token, options={"verify_signature": False})["exp"], tz=UTC)
    assert row.expires_at == exp + timedelta(seconds=settings.JWT_LEEWAY_SECONDS)
    # two days and a bit later the token has expired: only then may the row go
    assert revoked_tokens_purge(now=timezone.now() + timedelta(days=1)) == 0
    assert revoked_tokens_purge(now=timezone.now() + timedelta(days=2, minutes=5)) == 1


def test_a_short_ttl_never_lets_the_token_back_before_its_exp(token_service, settings):
    """Revoked with a TTL shorter than the token's life (the old failure): after the purge the
    token stays refused because the record lasts until the token's exp."""
    settings.JWT_MAX_TOKEN_LIFETIME_SECONDS = 3 * 24 * 3600
    bearer = token_service.bearer(jti="jti-exp", expires_in=2 * 24 * 3600)
    token_revoke(jti="jti-exp", expires_at=timezone.now() + timedelta(days=2))
    with freeze_time(timezone.now() + timedelta(days=1, hours=1)):
        revoked_tokens_purge()
        reset_all_local_caches()
        from django.core.cache import cache

        cache.clear()
        with pytest.raises(NotAuthenticated):
            token_authenticate(authorization=bearer)


@pytest.mark.parametrize("exp", [1e308, 4102444800 * 10])
def test_a_token_whose_exp_is_beyond_the_cap_is_refused(token_service, settings, exp):
    settings.JWT_MAX_TOKEN_LIFETIME_SECONDS = 24 * 3600
    token = token_service.token(jti="jti-forever", exp=exp)
    with pytest.raises(NotAuthenticated) as refused:
        token_authenticate(authorization=f"Bearer {token}")
    assert "expiry" in str(refused.value.detail)


def test_a_token_within_the_cap_is_accepted(token_service, settings):
    settings.JWT_MAX_TOKEN_LIFETIME_SECONDS = 24 * 3600
    token = token_service.token(jti="jti-day", expires_in=23 * 3600)
    assert token_authenticate(authorization=f"Bearer {token}").user_id


def test_revoke_token_command_validates_its_arguments():
    from django.core.management.base import CommandError

    with pytest.raises(CommandError):
        call_command("revoke_token", "--token", "not-a-jwt")
    with pytest.raises(CommandError):
        call_command("revoke_token", "j", "--ttl", "0")
    assert not RevokedToken.objects.exists()
