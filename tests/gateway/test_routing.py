"""Route matching (SPEC §3 Patterns): patterns, precedence, normalisation, 404/405."""

from __future__ import annotations

import json

import pytest

from gateway.routing import (
    MethodNotAllowed,
    NoUpstream,
    PathOutsideRoot,
    RouteNotFound,
    path_normalise,
    route_config_errors,
    route_resolve,
    route_upstream_path,
)
from tests.gateway.factories import RouteFactory, ServiceFactory

pytestmark = pytest.mark.django_db

# (pattern, path, captured params) — a match.
MATCHES = [
    ("/", "/", {}),
    ("/users", "/users", {}),
    ("/users/{user_id}", "/users/42", {"user_id": "42"}),
    ("/users/{user_id}/orders/{order_id}", "/users/7/orders/9", {"user_id": "7", "order_id": "9"}),
    ("/users/*/orders", "/users/7/orders", {}),
    ("/users/**", "/users", {"**": ""}),
    ("/users/**", "/users/1", {"**": "1"}),
    ("/users/**", "/users/1/orders", {"**": "1/orders"}),
    ("/**", "/anything/at/all", {"**": "anything/at/all"}),
    ("/files/{name}", "/files/a%20b", {"name": "a b"}),
    ("/users/{user_id}", "/users/42/", {"user_id": "42"}),
]

# (pattern, path) — no match.
MISSES = [
    ("/users", "/users/1"),
    ("/users/{user_id}", "/users"),
    ("/users/{user_id}", "/users/1/orders"),
    ("/users/*", "/users"),
    ("/users/**", "/users-admin"),
    ("/users/**", "/user"),
    ("/users/{id}/orders", "/users/1/invoices"),
]


@pytest.mark.parametrize(("pattern", "path", "params"), MATCHES)
def test_pattern_matches(pattern, path, params):
    route = RouteFactory(path=pattern, methods=["GET"])

    match = route_resolve(method="GET", path=path)

    assert match.route.id == route.id
    assert match.params == params


@pytest.mark.parametrize(("pattern", "path"), MISSES)
def test_pattern_does_not_match(pattern, path):
    RouteFactory(path=pattern, methods=["GET"])

    with pytest.raises(RouteNotFound):
        route_resolve(method="GET", path=path)


# (patterns in creation order with priorities, path, index of the winner)
PRECEDENCE = [
    # an exact literal path beats every pattern, even one with a higher priority
    ([("/users/{id}", 100), ("/users/me", 0)], "/users/me", 1),
    ([("/users/me", 0), ("/users/**", 100)], "/users/me", 0),
    # more literal segments win before priority is looked at
    ([("/users/{id}/orders", 0), ("/users/{id}/{what}", 50)], "/users/1/orders", 0),
    ([("/a/**", 0), ("/a/b/**", 0)], "/a/b/c", 1),
    ([("/**", 10), ("/api/**", 0)], "/api/x", 1),
    # equal literal segments: priority decides
    ([("/users/{id}", 0), ("/users/*", 5)], "/users/1", 1),
    ([("/users/{id}", 5), ("/users/*", 0)], "/users/1", 0),
    # equal literals and priority: a one-segment pattern beats '**'
    ([("/users/**", 0), ("/users/{id}", 0)], "/users/1", 1),
    # still equal: the literal earlier in the path wins, then the older route
    ([("/{x}/b/c", 0), ("/a/{y}/c", 0)], "/a/b/c", 1),
    ([("/users/{a}", 0), ("/users/{b}", 0)], "/users/1", 0),
    # patterns starting with a literal and with a parameter compete in the same look-up
    ([("/a/**", 0), ("/{x}/b", 0)], "/a/b", 1),
    ([("/a/{y}", 0), ("/{x}/b", 9)], "/a/b", 1),
    ([("/a/{y}", 0), ("/{x}/b", 9)], "/zzz/b", 1),
]


@pytest.mark.parametrize(("patterns", "path", "winner"), PRECEDENCE)
def test_most_specific_route_wins(patterns, path, winner):
    service = ServiceFactory()
    routes = [RouteFactory(path=p, priority=prio, methods=["GET"], service=service) for p, prio in patterns]

    match = route_resolve(method="GET", path=path)

    assert match.route.id == routes[winner].id, f"{path} matched {match.route.path}"


def test_method_is_chosen_before_specificity():
    service = ServiceFactory()
    RouteFactory(path="/users/{id}", methods=["GET"], service=service)
    catch_all_post = RouteFactory(path="/users/**", methods=["POST"], service=service)

    assert route_resolve(method="POST", path="/users/1").route.id == catch_all_post.id


def test_method_mismatch_is_405_with_allow_from_every_matching_route():
    service = ServiceFactory()
    RouteFactory(path="/users/{id}", methods=["GET", "PUT"], service=service)
    RouteFactory(path="/users/**", methods=["DELETE"], service=service)

    with pytest.raises(MethodNotAllowed) as caught:
        route_resolve(method="POST", path="/users/1")

    assert caught.value.status == 405
    assert caught.value.headers["Allow"] == "GET, HEAD, PUT, DELETE"
    body = json.loads(caught.value.to_response().content)
    assert body["status"] == 405 and body["type"].endswith("method-not-allowed")


def test_head_is_served_where_get_is():
    route = RouteFactory(path="/items", methods=["GET"])

    assert route_resolve(method="HEAD", path="/items").route.id == route.id
    with pytest.raises(MethodNotAllowed):
        route_resolve(method="OPTIONS", path="/items")


def test_a_route_listing_head_takes_head_requests_from_the_get_route():
    service = ServiceFactory()
    get_route = RouteFactory(path="/items/{id}", methods=["GET"], service=service)
    head_route = RouteFactory(path="/items/**", methods=["HEAD"], service=service)

    assert route_resolve(method="HEAD", path="/items/1").route.id == head_route.id
    assert route_resolve(method="GET", path="/items/1").route.id == get_route.id


def test_unknown_path_is_404_problem():
    RouteFactory(path="/users/**")

    with pytest.raises(RouteNotFound) as caught:
        route_resolve(method="GET", path="/orders/1")

    response = caught.value.to_response()
    assert response.status_code == 404
    assert json.loads(response.content)["type"].endswith("route-not-found")


def test_disabled_route_is_not_matched():
    RouteFactory(path="/users/**", enabled=False)

    with pytest.raises(RouteNotFound):
        route_resolve(method="GET", path="/users/1")


def test_route_of_disabled_service_answers_503_rather_than_falling_through():
    RouteFactory(path="/**", methods=["GET"], priority=0)
    RouteFactory(path="/users/**", methods=["GET"], service=ServiceFactory(enabled=False))

    with pytest.raises(NoUpstream) as caught:
        route_resolve(method="GET", path="/users/1")
    assert caught.value.status == 503


# (raw path, normalised path, decoded segments)
NORMALISATION = [
    ("", "/", ()),
    ("/", "/", ()),
    ("//users///1", "/users/1", ("users", "1")),
    ("/users/./1", "/users/1", ("users", "1")),
    ("/users/x/../1", "/users/1", ("users", "1")),
    ("/users/x/%2e%2e/1", "/users/1", ("users", "1")),
    ("/users/x/%2E./1", "/users/1", ("users", "1")),
    ("/users/1/", "/users/1/", ("users", "1")),
    ("/a%20b", "/a%20b", ("a b",)),
    ("/users/..", "/", ()),
]


@pytest.mark.parametrize(("raw", "normalised", "segments"), NORMALISATION)
def test_path_normalisation(raw, normalised, segments):
    assert path_normalise(raw)[:2] == (normalised, segments)


@pytest.mark.parametrize(
    "raw",
    [
        "/..",
        "/../etc/passwd",
        "/users/../../x",
        "/%2e%2e/x",
        "/users/%2e%2e/%2E%2E/x",
        "/a/..%2f..%2fx",
        "/a%00b",
        # issue 13 item 5: Tomcat, Jetty and Spring read '/a/..;/b' as '/b'
        "/public/..;/secure/x",
        "/public/.;x/secure",
        "/public/%2e%2e;jsessionid=1/secure/x",
        # issue 13 item 12: an invalid percent-escape is refused, never re-encoded as '%25zz'
        "/public/%zz",
        "/public/a%2",
        "/public/%",
    ],
)
def test_path_escaping_the_root_is_400(raw):
    RouteFactory(path="/**")

    with pytest.raises(PathOutsideRoot) as caught:
        route_resolve(method="GET", path=raw)

    assert caught.value.status == 400
    assert json.loads(caught.value.to_response().content)["type"].endswith("invalid-path")


def test_dot_segments_cannot_reach_another_route():
    service = ServiceFactory()
    RouteFactory(path="/public/**", methods=["GET"], service=service, auth_required=False)
    admin = RouteFactory(path="/admin/**", methods=["GET"], service=service, auth_required=True)

    match = route_resolve(method="GET", path="/public/%2e%2e/admin/users")

    assert match.route.id == admin.id and match.route.auth_required
    assert match.path == "/admin/users"


def test_upstream_path_is_matched_path_or_rewrite():
    service = ServiceFactory()
    RouteFactory(path="/users/{user_id}", service=service)
    RouteFactory(path="/legacy/**", rewrite="/v2/{**}", service=service)
    RouteFactory(path="/items/{item}", rewrite="/catalogue/{item}/detail", service=service)

    assert route_upstream_path(match=route_resolve(method="GET", path="/users//1")) == "/users/1"
    assert route_upstream_path(match=route_resolve(method="GET", path="/legacy/a/b%2Fc")) == "/v2/a/b%2Fc"
    assert route_upstream_path(match=route_resolve(method="GET", path="/legacy")) == "/v2"
    assert (
        route_upstream_path(match=route_resolve(method="GET", path="/items/x%20y"))
        == "/catalogue/x%20y/detail"
    )


@pytest.mark.parametrize(
    ("fields", "field", "message"),
    [
        ({"path": "users"}, "path", "starts with '/'"),
        ({"path": "/users/**/x"}, "path", "last segment"),
        ({"path": "/a/{id}/{id}"}, "path", "twice"),
        ({"path": "/a/x{id}"}, "path", "whole segment"),
        ({"path": "/a//b"}, "path", "Empty segment"),
        (
            {
                "path": "/a/",
            },
            "path",
            "Empty segment",
        ),
        ({"methods": ["GET", "FETCH"]}, "methods", "Unknown method"),
        ({"methods": []}, "methods", "at least one"),
        ({"methods": ["get"]}, "methods", "Unknown method"),
        ({"rewrite": "/v2/{other}"}, "rewrite", "not captured"),
        ({"condition": {"user_id": 5}}, "condition", "flat object"),
        ({"condition": ["x"]}, "condition", "is an object"),
    ],
)
def test_route_config_validation(fields, field, message):
    values = {"path": "/users/{user_id}", "methods": ["GET"], "rewrite": "", "condition": {}, **fields}

    errors = route_config_errors(**values)

    assert field in errors and message in " ".join(errors[field]), errors


def test_valid_route_config_has_no_errors():
    assert (
        route_config_errors(
            path="/users/{user_id}/**",
            methods=["GET", "HEAD"],
            rewrite="/v1/{user_id}/{**}",
            condition={"user_id": "{{X-User-ID}}"},
        )
        == {}
    )


def test_a_new_route_is_seen_after_the_table_was_built():
    service = ServiceFactory()
    RouteFactory(path="/users/**", service=service)
    assert route_resolve(method="GET", path="/users/me").route.path == "/users/**"

    RouteFactory(path="/users/me", service=service)

    assert route_resolve(method="GET", path="/users/me").route.path == "/users/me"


# --- Through /gw: what a client sees ------------------------------------------------------------


def _problem(response) -> dict:
    assert response["Content-Type"] == "application/problem+json"
    return response.json()


@pytest.mark.django_db(transaction=True)
def test_http_unknown_path_is_404_problem(gw):
    RouteFactory(path="/users/**", auth_required=False)

    response = gw.get("/gw/orders/1")

    assert response.status_code == 404
    assert _problem(response)["type"].endswith("/route-not-found")


@pytest.mark.django_db(transaction=True)
def test_http_wrong_method_is_405_with_allow(gw):
    RouteFactory(path="/users/{user_id}", methods=["GET", "DELETE"], auth_required=False)

    response = gw.post("/gw/users/1", b"{}", content_type="application/json")

    assert response.status_code == 405
    assert response["Allow"] == "GET, HEAD, DELETE"
    assert _problem(response)["status"] == 405


@pytest.mark.django_db(transaction=True)
def test_http_path_escaping_the_root_is_400(gw):
    RouteFactory(path="/**", auth_required=False)

    response = gw.get("/gw/%2e%2e/admin/")

    assert response.status_code == 400
    assert _problem(response)["type"].endswith("/invalid-path")


@pytest.mark.django_db(transaction=True)
def test_raw_requests_to_a_server_process(gateway_process_factory, http_server_factory):
    """The production server hands the raw request-target over: encoded dots and '//' included."""
    import http.client
    from urllib.parse import urlsplit

    from tests.support.servers import Reply

    upstream = http_server_factory(lambda request: Reply(200, request.path.encode()))
    RouteFactory(
        path="/files/**", methods=["GET"], auth_required=False, service=ServiceFactory(targets=[upstream.url])
    )
    RouteFactory(path="/admin/**", methods=["GET"], service=ServiceFactory(targets=[upstream.url]))
    netloc = urlsplit(gateway_process_factory()).netloc

    def get(target: str, method: str = "GET") -> tuple[int, dict, bytes]:
        connection = http.client.HTTPConnection(netloc, timeout=10)
        connection.request(method, target)
        response = connection.getresponse()
        result = response.status, {k.title(): v for k, v in response.getheaders()}, response.read()
        connection.close()
        return result

    status, _, body = get("/gw/files//a/./b/%2e%2e/c%20d?x=1")
    assert (status, body) == (200, b"/files/a/c%20d?x=1")
    status, _, body = get("/gw/files/%2e%2e/%2e%2e/etc/passwd")
    assert status == 400 and json.loads(body)["type"].endswith("/invalid-path")
    status, _, body = get("/gw/files/%2e%2e/admin/x")  # lands on /admin/**, which requires auth
    assert status == 401
    status, headers, _ = get("/gw/files/a", method="DELETE")
    assert status == 405 and headers["Allow"] == "GET, HEAD"
    status, _, body = get("/gw/nothing")
    assert status == 404 and json.loads(body)["type"].endswith("/route-not-found")
    # issue 13 items 5 and 12: a '..;' segment and an invalid escape are 400, never forwarded
    for target in ("/gw/files/..;/admin/x", "/gw/files/%zz"):
        status, headers, body = get(target)
        assert status == 400, target
        assert headers["Content-Type"] == "application/problem+json"
        assert json.loads(body)["type"].endswith("/invalid-path")
    status, _, body = get("/gw/files/a;v=1")  # a parameter on an ordinary segment is kept
    assert (status, body) == (200, b"/files/a;v=1")
    assert [r.path for r in upstream.requests] == ["/files/a/c%20d?x=1", "/files/a;v=1"]


@pytest.mark.django_db(transaction=True)
def test_query_string_reaches_the_upstream_byte_for_byte(gateway_process_factory, http_server_factory):
    """Signed URLs break if a hop re-encodes: `%7e` must not become `%7E` (nor `~`), `+` stays."""
    import http.client
    from urllib.parse import urlsplit

    from tests.support.servers import Reply

    upstream = http_server_factory(lambda request: Reply(200, request.path.encode()))
    RouteFactory(
        path="/files/**", methods=["GET"], auth_required=False, service=ServiceFactory(targets=[upstream.url])
    )
    connection = http.client.HTTPConnection(urlsplit(gateway_process_factory()).netloc, timeout=10)
    connection.request("GET", "/gw/files/x?tilde=%7e&a=%2F+b")
    response = connection.getresponse()
    body = response.read()
    connection.close()

    assert (response.status, body) == (200, b"/files/x?tilde=%7e&a=%2F+b")
    assert [r.path for r in upstream.requests] == ["/files/x?tilde=%7e&a=%2F+b"]
