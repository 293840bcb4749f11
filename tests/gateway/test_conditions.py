"""Route conditions: path then query parameters compared with identity-header templates."""

from __future__ import annotations

import pytest

from common.errors import PermissionDenied
from gateway.services.auth import request_identity
from gateway.types import ResolvedRoute, RouteMatch

pytestmark = pytest.mark.django_db


def _match(condition: dict, params: dict | None = None) -> RouteMatch:
    route = ResolvedRoute(
        id=1,
        methods=("GET",),
        path="/users/{user_id}",
        service="users.test",
        targets=("http://127.0.0.1:9",),
        condition=condition,
    )
    return RouteMatch(route=route, params=params or {}, path="/users/x")


def _identity(token_service, match: RouteMatch, query_string: str = "", **claims):
    return request_identity(
        authorization=token_service.bearer(permissions=[], **claims), match=match, query_string=query_string
    )


def test_path_parameter_equal_to_the_callers_user_id_is_allowed(token_service):
    match = _match({"user_id": "{{X-User-ID}}"}, {"user_id": "u-1"})
    assert _identity(token_service, match, sub="u-1").user_id == "u-1"


def test_path_parameter_of_another_user_is_403(token_service):
    match = _match({"user_id": "{{X-User-ID}}"}, {"user_id": "u-2"})
    with pytest.raises(PermissionDenied) as caught:
        _identity(token_service, match, sub="u-1")
    assert caught.value.to_response().status_code == 403


def test_query_parameter_is_used_when_the_path_has_none(token_service):
    match = _match({"tenant": "{{X-Tenant-ID}}"})
    assert _identity(token_service, match, "tenant=acme&x=1", tenant_id="acme").tenant_id == "acme"
    with pytest.raises(PermissionDenied):
        _identity(token_service, match, "tenant=other", tenant_id="acme")


def test_path_parameter_wins_over_the_query(token_service):
    match = _match({"user_id": "{{X-User-ID}}"}, {"user_id": "u-2"})
    with pytest.raises(PermissionDenied):
        _identity(token_service, match, "user_id=u-1", sub="u-1")


def test_repeated_query_parameter_must_match_every_time(token_service):
    match = _match({"user_id": "{{X-User-ID}}"})
    with pytest.raises(PermissionDenied):
        _identity(token_service, match, "user_id=u-1&user_id=u-2", sub="u-1")


def test_condition_key_in_neither_path_nor_query_is_403(token_service):
    with pytest.raises(PermissionDenied):
        _identity(token_service, _match({"user_id": "{{X-User-ID}}"}), sub="u-1")


def test_every_condition_must_hold(token_service):
    match = _match({"user_id": "{{X-User-ID}}", "tenant": "{{X-Tenant-ID}}"}, {"user_id": "u-1"})
    assert _identity(token_service, match, "tenant=t-1", sub="u-1", tenant_id="t-1")
    with pytest.raises(PermissionDenied):
        _identity(token_service, match, "tenant=t-2", sub="u-1", tenant_id="t-1")


def test_templates_may_mix_literals_and_headers_case_insensitively(token_service):
    match = _match({"owner": "{{x-tenant-id}}/{{ X-User-ID }}"}, {"owner": "t-1/u-1"})
    assert _identity(token_service, match, sub="u-1", tenant_id="t-1")


def test_unknown_header_in_a_template_is_403(token_service):
    match = _match({"user_id": "{{X-Forwarded-For}}"}, {"user_id": "1.2.3.4"})
    with pytest.raises(PermissionDenied):
        _identity(token_service, match, sub="u-1")


def test_empty_tenant_does_not_match_a_non_empty_parameter(token_service):
    match = _match({"tenant": "{{X-Tenant-ID}}"}, {"tenant": "t-1"})
    with pytest.raises(PermissionDenied):
        _identity(token_service, match, tenant_id=None)
