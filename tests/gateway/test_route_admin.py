"""Routes and services edited through the Django admin, as staff do."""

from __future__ import annotations

import pytest
from django.urls import reverse

from gateway.models import Route, Service
from gateway.routing import route_resolve
from tests.gateway.factories import RouteFactory, ServiceFactory

pytestmark = pytest.mark.django_db


def _route_form(service: Service, **overrides) -> dict:
    data = {
        "methods": ["GET"],
        "path": "/users/{user_id}",
        "service": service.pk,
        "rewrite": "",
        "auth_required": "on",
        "required_permission": "user.read",
        "condition": '{"user_id": "{{X-User-ID}}"}',
        "timeout_ms": 3000,
        "retry_count": 2,
        "cache_ttl_seconds": 0,
        "idempotency": "off",
        "priority": 0,
        "enabled": "on",
    }
    data.update(overrides)
    return {key: value for key, value in data.items() if value is not None}


def _service_form(name: str, urls: list[str]) -> dict:
    data = {
        "name": name,
        "description": "",
        "enabled": "on",
        "targets-TOTAL_FORMS": str(len(urls)),
        "targets-INITIAL_FORMS": "0",
        "targets-MIN_NUM_FORMS": "0",
        "targets-MAX_NUM_FORMS": "1000",
    }
    for index, url in enumerate(urls):
        data[f"targets-{index}-url"] = url
        data[f"targets-{index}-enabled"] = "on"
    return data


def test_staff_adds_a_route_and_it_is_served(admin_client, django_capture_on_commit_callbacks):
    service = ServiceFactory(targets=["http://127.0.0.1:9001"])
    with pytest.raises(Exception):  # noqa: B017  (nothing routed yet)
        route_resolve(method="GET", path="/users/1")

    with django_capture_on_commit_callbacks(execute=True):
        response = admin_client.post(reverse("admin:gateway_route_add"), _route_form(service))

    assert response.status_code == 302, response.content.decode()[:2000]
    route = Route.objects.get(path="/users/{user_id}")
    assert route.methods == ["GET"] and route.condition == {"user_id": "{{X-User-ID}}"}
    match = route_resolve(method="GET", path="/users/1")
    assert match.route.id == route.id and match.route.targets == ("http://127.0.0.1:9001",)


def test_staff_edit_takes_effect_after_commit(admin_client, django_capture_on_commit_callbacks):
    route = RouteFactory(path="/users/{user_id}", methods=["GET"])
    assert route_resolve(method="GET", path="/users/1").route.required_permission == ""

    with django_capture_on_commit_callbacks(execute=True):
        response = admin_client.post(
            reverse("admin:gateway_route_change", args=[route.pk]),
            _route_form(route.service, required_permission="user.admin"),
        )

    assert response.status_code == 302
    assert route_resolve(method="GET", path="/users/1").route.required_permission == "user.admin"


@pytest.mark.parametrize(
    ("overrides", "field", "message"),
    [
        ({"path": "/users/**/orders"}, "path", "may only be the last segment"),
        ({"path": "/users/{id}/{id}"}, "path", "appears twice"),
        ({"path": "users"}, "path", "starts with"),
        ({"rewrite": "/v2/{account}"}, "rewrite", "is not captured"),
        ({"condition": '{"user_id": 7}'}, "condition", "flat object"),
        ({"condition": "[1]"}, "condition", "is an object"),
        ({"methods": ["FETCH"]}, "methods", "not one of the available choices"),
        ({"methods": None}, "methods", "required"),
        ({"methods": ["POST"], "cache_ttl_seconds": 60}, "cache_ttl_seconds", "Only GET/HEAD"),
    ],
)
def test_admin_rejects_invalid_routes(admin_client, overrides, field, message):
    service = ServiceFactory()

    response = admin_client.post(reverse("admin:gateway_route_add"), _route_form(service, **overrides))

    assert response.status_code == 200  # the form again, with the error
    errors = response.context["adminform"].form.errors
    assert field in errors and message in " ".join(errors[field]), errors
    assert not Route.objects.exists()


def test_admin_rejects_a_duplicate_of_an_enabled_route(admin_client):
    existing = RouteFactory(path="/users/{user_id}", methods=["GET", "POST"])

    response = admin_client.post(
        reverse("admin:gateway_route_add"), _route_form(existing.service, methods=["POST", "PUT"])
    )

    assert response.status_code == 200
    errors = response.context["adminform"].form.errors
    assert f"Route #{existing.pk}" in " ".join(errors["path"]) and "POST" in " ".join(errors["path"])
    assert Route.objects.count() == 1


def test_a_disabled_duplicate_is_allowed(admin_client):
    existing = RouteFactory(path="/users/{user_id}", methods=["GET"])

    response = admin_client.post(
        reverse("admin:gateway_route_add"), _route_form(existing.service, enabled=None)
    )

    assert response.status_code == 302
    assert Route.objects.count() == 2


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("ftp://10.0.0.5", "Only http:// and https://"),
        ("http://10.0.0.5:8080/api?x=1", "no query string"),
        ("http://10.0.0.5/#frag", "no query string or fragment"),
        ("http://user:pw@10.0.0.5", "no credentials"),
    ],
)
def test_admin_rejects_bad_target_urls(admin_client, url, message):
    response = admin_client.post(reverse("admin:gateway_service_add"), _service_form("users", [url]))

    assert response.status_code == 200
    assert message in response.content.decode()
    assert not Service.objects.filter(name="users").exists()


def test_admin_adds_a_service_with_targets(admin_client, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=True):
        response = admin_client.post(
            reverse("admin:gateway_service_add"),
            _service_form("users", ["http://10.0.0.5:8080/", "https://users.internal/base"]),
        )

    assert response.status_code == 302, response.content.decode()[:3000]
    service = Service.objects.get(name="users")
    assert sorted(t.url for t in service.targets.all()) == [
        "http://10.0.0.5:8080",
        "https://users.internal/base",
    ]


def test_route_list_filters_and_search(admin_client):
    users = ServiceFactory(name="user-service.master")
    orders = ServiceFactory(name="order-service.master")
    RouteFactory(path="/users/{id}", methods=["GET"], service=users, required_permission="user.read")
    RouteFactory(path="/orders/**", methods=["POST"], service=orders, auth_required=False)

    def listed(**params) -> str:
        response = admin_client.get(reverse("admin:gateway_route_changelist"), params)
        assert response.status_code == 200
        return response.content.decode()

    assert "/users/{id}" in listed(q="user.read") and "/orders/**" not in listed(q="user.read")
    assert "/orders/**" in listed(q="order-service") and "/users/{id}" not in listed(q="order-service")
    assert "/orders/**" in listed(method="POST") and "/users/{id}" not in listed(method="POST")
    assert "/users/{id}" in listed(auth_required__exact="1") and "/orders/**" not in listed(
        auth_required__exact="1"
    )
    assert "/users/{id}" in listed(service__id__exact=str(users.pk))


def test_deleting_a_route_in_admin_stops_routing(admin_client, django_capture_on_commit_callbacks):
    route = RouteFactory(path="/users/{user_id}")
    route_resolve(method="GET", path="/users/1")

    with django_capture_on_commit_callbacks(execute=True):
        response = admin_client.post(reverse("admin:gateway_route_delete", args=[route.pk]), {"post": "yes"})

    assert response.status_code == 302
    from gateway.routing import RouteNotFound

    with pytest.raises(RouteNotFound):
        route_resolve(method="GET", path="/users/1")


def test_enable_action_refuses_a_duplicate_and_disable_action_stops_routing(
    admin_client, django_capture_on_commit_callbacks
):
    live = RouteFactory(path="/users/{user_id}", methods=["GET"])
    copy = RouteFactory(path="/users/{user_id}", methods=["GET"], service=live.service, enabled=False)
    other = RouteFactory(path="/other/**", methods=["GET"], service=live.service, enabled=False)
    changelist = reverse("admin:gateway_route_changelist")

    with django_capture_on_commit_callbacks(execute=True):
        response = admin_client.post(
            changelist, {"action": "enable_routes", "_selected_action": [copy.pk, other.pk]}, follow=True
        )

    text = response.content.decode()
    assert "1 route(s) enabled." in text and "Not enabled: GET /users/{user_id}" in text
    copy.refresh_from_db()
    other.refresh_from_db()
    assert copy.enabled is False and other.enabled is True
    assert route_resolve(method="GET", path="/other/x").route.id == other.pk

    with django_capture_on_commit_callbacks(execute=True):
        admin_client.post(changelist, {"action": "disable_routes", "_selected_action": [live.pk]})

    from gateway.routing import RouteNotFound

    with pytest.raises(RouteNotFound):
        route_resolve(method="GET", path="/users/1")
