"""`manage.py load_routes` / `export_routes` with the SPEC's file format."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError

from gateway.models import Route, Service
from gateway.routing import RouteNotFound, route_resolve
from tests.gateway.factories import RouteFactory, ServiceFactory

pytestmark = pytest.mark.django_db

ROOT = Path(__file__).resolve().parents[2]

SPEC_FILE = {
    "services": [{"name": "user-service.master", "targets": ["http://127.0.0.1:9001"]}],
    "routes": [
        {
            "method": "GET",
            "path": "/users/{user_id}",
            "backend": "user-service.master",
            "x-required-permission": "user.read",
            "x-condition": {"user_id": "{{X-User-ID}}"},
            "timeout": 3000,
            "retry": 2,
        },
        {
            "methods": ["POST", "PUT"],
            "path": "/users/{user_id}/orders",
            "backend": "user-service.master",
            "idempotency": "required",
            "auth_required": False,
            "rewrite": "/v2/users/{user_id}/orders",
            "priority": 5,
        },
    ],
}


def _write(tmp_path: Path, data, name: str = "routes.json") -> str:
    path = tmp_path / name
    path.write_text(json.dumps(data) if not isinstance(data, str) else data)
    return str(path)


def _load(path: str, *args: str) -> str:
    out = io.StringIO()
    call_command("load_routes", path, *args, stdout=out, stderr=io.StringIO())
    return out.getvalue()


def _snapshot() -> list[tuple]:
    return [
        (r.path, tuple(r.methods), r.service.name, r.required_permission, r.timeout_ms, r.enabled)
        for r in Route.objects.select_related("service").order_by("path", "id")
    ]


def test_load_creates_services_and_routes(tmp_path, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=True):
        output = _load(_write(tmp_path, SPEC_FILE))

    assert "routes: 2 created, 0 updated, 0 unchanged, 0 pruned" in output
    assert "services: 1 created" in output
    assert "created  GET /users/{user_id} → user-service.master" in output
    get = Route.objects.get(path="/users/{user_id}")
    assert get.methods == ["GET"] and get.required_permission == "user.read"
    assert get.condition == {"user_id": "{{X-User-ID}}"} and get.timeout_ms == 3000 and get.retry_count == 2
    assert get.auth_required is True  # model default
    post = Route.objects.get(path="/users/{user_id}/orders")
    assert post.methods == ["POST", "PUT"] and post.idempotency == "required" and post.priority == 5
    match = route_resolve(method="PUT", path="/users/7/orders")
    assert match.route.id == post.id and match.route.targets == ("http://127.0.0.1:9001",)


def test_loading_again_is_unchanged_and_an_edit_is_an_update(tmp_path, django_capture_on_commit_callbacks):
    path = _write(tmp_path, SPEC_FILE)
    _load(path)

    assert "routes: 0 created, 0 updated, 2 unchanged" in _load(path)

    edited = json.loads(json.dumps(SPEC_FILE))
    edited["routes"][0]["timeout"] = 5000
    del edited["routes"][0]["x-required-permission"]  # a key left out goes back to the default
    with django_capture_on_commit_callbacks(execute=True):
        output = _load(_write(tmp_path, edited, "edited.json"))

    assert "routes: 0 created, 1 updated, 1 unchanged" in output
    assert "timeout_ms 3000 → 5000" in output
    route = Route.objects.get(path="/users/{user_id}")
    assert route.timeout_ms == 5000 and route.required_permission == ""
    assert route_resolve(method="GET", path="/users/1").route.timeout_ms == 5000


def test_dry_run_changes_nothing(tmp_path):
    RouteFactory(path="/old/**", methods=["GET"])
    before = _snapshot()

    output = _load(_write(tmp_path, SPEC_FILE), "--dry-run", "--prune")

    assert "dry run, nothing changed: would have routes: 2 created" in output
    assert "1 pruned" in output and "pruned   GET /old/**" in output
    assert _snapshot() == before
    assert not Service.objects.filter(name="user-service.master").exists()


def test_prune_removes_routes_absent_from_the_file(tmp_path, django_capture_on_commit_callbacks):
    RouteFactory(path="/old/**", methods=["GET"])
    _load(_write(tmp_path, SPEC_FILE))
    assert route_resolve(method="GET", path="/old/x")

    with django_capture_on_commit_callbacks(execute=True):
        output = _load(_write(tmp_path, SPEC_FILE), "--prune")

    assert "0 created, 0 updated, 2 unchanged, 1 pruned" in output
    assert set(Route.objects.values_list("path", flat=True)) == {
        "/users/{user_id}",
        "/users/{user_id}/orders",
    }
    with pytest.raises(RouteNotFound):
        route_resolve(method="GET", path="/old/x")


def test_without_prune_other_routes_stay(tmp_path):
    RouteFactory(path="/old/**", methods=["GET"])

    _load(_write(tmp_path, SPEC_FILE))

    assert Route.objects.filter(path="/old/**").exists()


@pytest.mark.parametrize(
    ("mutate", "expected"),
    [
        (
            lambda d: d["routes"][1].update(path="/users/**/orders"),
            "routes[1] (POST,PUT /users/**/orders): path:",
        ),
        (
            lambda d: d["routes"][0].update(backend="nope"),
            "routes[0] (GET /users/{user_id}): backend 'nope' is not",
        ),
        (lambda d: d["routes"][0].update(timeout="soon"), "routes[0] (GET /users/{user_id}): timeout_ms:"),
        (lambda d: d["routes"][0].update(timeout=10**9), "timeout_ms: Ensure this value is less than"),
        (lambda d: d["routes"][0].update(methods=["GET"]), 'give either "method" (one) or "methods"'),
        (
            lambda d: d["routes"][0].update(colour="red"),
            "routes[0] (GET /users/{user_id}): unknown key(s) colour",
        ),
        (
            lambda d: d["routes"][1].update(idempotency="always"),
            "routes[1] (POST,PUT /users/{user_id}/orders): idempotency",
        ),
        (lambda d: d["routes"][0].update({"x-condition": {"user_id": 1}}), "condition: A condition maps"),
        (lambda d: d["routes"][1].update(rewrite="/v2/{order_id}"), "rewrite: '{order_id}' is not captured"),
        (lambda d: d["routes"].append(dict(d["routes"][0])), "routes[2] (GET /users/{user_id}): same path"),
        (
            lambda d: d["services"][0].update(targets=["ftp://x"]),
            "services[0] (user-service.master): targets[0]",
        ),
    ],
)
def test_a_bad_file_names_the_entry_and_changes_nothing(tmp_path, mutate, expected):
    RouteFactory(path="/old/**", methods=["GET"])
    before = _snapshot()
    data = json.loads(json.dumps(SPEC_FILE))
    mutate(data)
    err = io.StringIO()

    with pytest.raises(CommandError, match="nothing was changed"):
        call_command("load_routes", _write(tmp_path, data), "--prune", stdout=io.StringIO(), stderr=err)

    assert expected in err.getvalue(), err.getvalue()
    assert _snapshot() == before
    assert not Service.objects.filter(name="user-service.master").exists()


def test_a_file_clashing_with_an_existing_route_fails_as_a_whole(tmp_path):
    RouteFactory(path="/users/{user_id}", methods=["GET", "DELETE"])
    before = _snapshot()
    err = io.StringIO()

    with pytest.raises(CommandError):
        call_command("load_routes", _write(tmp_path, SPEC_FILE), stdout=io.StringIO(), stderr=err)

    assert "routes[0] (GET /users/{user_id}): path: Route #" in err.getvalue()
    assert _snapshot() == before


def test_invalid_json_says_where(tmp_path):
    err = io.StringIO()

    with pytest.raises(CommandError):
        call_command("load_routes", _write(tmp_path, '{"routes": [\n  {"path": }]}'), stderr=err)

    assert "not valid JSON" in err.getvalue() and "line 2" in err.getvalue()


def test_missing_file_is_a_clear_error(tmp_path):
    err = io.StringIO()
    with pytest.raises(CommandError):
        call_command("load_routes", str(tmp_path / "nope.json"), stderr=err)
    assert "cannot read" in err.getvalue()


def test_export_round_trips_through_load(tmp_path):
    service = ServiceFactory(name="orders", targets=["http://10.0.0.1:80", "http://10.0.0.2:80"])
    service.targets.filter(url="http://10.0.0.2:80").update(enabled=False)
    ServiceFactory(name="idle", enabled=False, targets=["https://idle.internal/base"])
    RouteFactory(
        path="/orders/{id}",
        methods=["GET", "HEAD"],
        service=service,
        cache_ttl_seconds=30,
        condition={"tenant": "{{X-Tenant-ID}}"},
    )
    RouteFactory(
        path="/orders/**",
        methods=["POST"],
        service=service,
        idempotency="optional",
        auth_required=False,  # and so neither a required permission nor a condition
        rewrite="/api/{**}",
        priority=-1,
        enabled=False,
    )
    before = _snapshot()
    exported = tmp_path / "export.json"
    call_command("export_routes", "--output", str(exported), stdout=io.StringIO())

    Route.objects.all().delete()
    Service.objects.all().delete()
    output = _load(str(exported))

    assert "routes: 2 created" in output and "services: 2 created" in output
    assert _snapshot() == before
    again = io.StringIO()
    call_command("export_routes", stdout=again)
    assert json.loads(again.getvalue()) == json.loads(exported.read_text())
    assert Service.objects.get(name="orders").targets.get(url="http://10.0.0.2:80").enabled is False
    assert Service.objects.get(name="idle").enabled is False


def test_demo_route_file_loads(django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=True):
        output = _load(str(ROOT / "demo" / "routes.json"))

    assert "routes: 4 created" in output
    assert route_resolve(method="GET", path="/demo/anything").route.auth_required is False
    assert route_resolve(method="POST", path="/demo/register").route.idempotency == "required"
    assert route_resolve(method="GET", path="/demo/cached/x").route.cache_ttl_seconds > 0
    assert route_resolve(method="GET", path="/demo/x").route.targets == ("http://127.0.0.1:8001",)


@pytest.mark.parametrize(
    ("fields", "named"),
    [
        ({"required_permission": "user.read"}, "required_permission"),
        ({"condition": {"user_id": "{{X-User-ID}}"}}, "condition"),
        (
            {"required_permission": "user.read", "condition": {"user_id": "{{X-User-ID}}"}},
            "required_permission and condition",
        ),
    ],
)
def test_route_validation_refuses_permission_or_condition_on_a_public_route(fields, named):
    from gateway.routing import route_config_errors

    errors = route_config_errors(path="/users/{user_id}", methods=["GET"], auth_required=False, **fields)

    assert list(errors) == ["auth_required"]
    assert named in errors["auth_required"][0] and "never be checked" in errors["auth_required"][0]
    # the same fields with auth required, or a public route without them, are fine
    assert route_config_errors(path="/users/{user_id}", methods=["GET"], auth_required=True, **fields) == {}
    assert route_config_errors(path="/users/{user_id}", methods=["GET"], auth_required=False) == {}


def test_load_routes_refuses_permission_or_condition_on_a_public_route(tmp_path):
    data = json.loads(json.dumps(SPEC_FILE))
    data["routes"][0]["auth_required"] = False  # it has x-required-permission and x-condition
    err = io.StringIO()

    with pytest.raises(CommandError, match="nothing was changed"):
        call_command("load_routes", _write(tmp_path, data), stdout=io.StringIO(), stderr=err)

    assert (
        "routes[0] (GET /users/{user_id}): auth_required: A public route (auth_required = false) "
        "identifies nobody, so its required_permission and condition would never be checked"
    ) in err.getvalue(), err.getvalue()
    assert not Route.objects.exists()
