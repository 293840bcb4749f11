"""Route policies through real gateway processes and real upstreams (SPEC §3 "Policies")."""

from __future__ import annotations

import json
import time

import pytest
import requests

from tests.gateway.proxy_support import proxy_route
from tests.support.servers import Reply, free_port

pytestmark = pytest.mark.django_db(transaction=True)


def _ok(request):  # noqa: ANN001
    return Reply(200, b"ok")


def test_limit_per_user_is_shared_by_two_instances(
    http_server_factory, gateway_process_factory, token_service, tmp_path
):
    upstream = http_server_factory(_ok)
    proxy_route(
        upstream.url,
        path="/limited/**",
        auth_required=True,
        policies={"rate_limit": {"limit": 5, "window_seconds": 60, "key": "user"}},
    )
    # /metrics sums every worker
    env = {**token_service.env, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}
    first, second = gateway_process_factory(env), gateway_process_factory(env)
    alice = {"Authorization": token_service.bearer(sub="alice")}

    answers = [
        requests.get(f"{(first, second)[n % 2]}/gw/limited/{n}", headers=alice, timeout=10) for n in range(10)
    ]

    assert [r.status_code for r in answers] == [200] * 5 + [429] * 5
    refused = answers[5]
    assert refused.headers["Content-Type"] == "application/problem+json"
    assert refused.json()["type"].endswith("/rate-limited")
    assert 1 <= int(refused.headers["Retry-After"]) <= 60
    for answer in answers:  # every answer of a limited route carries both headers
        assert answer.headers["RateLimit-Policy"] == '"gw";q=5;w=60'
        assert answer.headers["RateLimit"].startswith('"gw";r=')
    assert answers[0].headers["RateLimit"].startswith('"gw";r=4;')
    assert len(upstream.requests) == 5
    bob = requests.get(
        f"{second}/gw/limited/x", headers={"Authorization": token_service.bearer(sub="bob")}, timeout=10
    )
    assert bob.status_code == 200
    metrics = requests.get(f"{first}/metrics", timeout=10).text
    assert 'gatehouse_rate_limited_total{route="/limited/**"}' in metrics
    anonymous = requests.get(f"{first}/gw/limited/x", timeout=10)  # answered before the count
    assert anonymous.status_code == 401
    assert anonymous.headers["RateLimit-Policy"] == '"gw";q=5;w=60'
    assert len(upstream.requests) == 6


def test_a_tenant_limit_is_shared_by_the_users_of_that_tenant(
    http_server_factory, gateway_process_factory, token_service
):
    upstream = http_server_factory(_ok)
    proxy_route(
        upstream.url,
        path="/tenant/**",
        auth_required=True,
        policies={"rate_limit": {"limit": 3, "window_seconds": 60, "key": "tenant"}},
    )
    gateway = gateway_process_factory(token_service.env)

    def call(sub: str, tenant_id: str) -> int:
        headers = {"Authorization": token_service.bearer(sub=sub, tenant_id=tenant_id)}
        return requests.get(f"{gateway}/gw/tenant/a", headers=headers, timeout=10).status_code

    acme = [call(sub, "acme") for sub in ("alice", "bob", "carol", "alice")]
    other = call("dave", "globex")

    assert acme == [200, 200, 200, 429]  # three users, one tenant quota
    assert other == 200


def test_default_policies_apply_to_every_route_unless_it_drops_them(
    http_server_factory, gateway_process_factory
):
    upstream = http_server_factory(_ok)
    proxy_route(upstream.url, path="/guarded/**")
    proxy_route(upstream.url, path="/exempt/**", policies={"ip_deny": None})
    proxy_route(upstream.url, path="/own/**", policies={"ip_deny": ["10.0.0.0/8"]})
    defaults = {"ip_deny": ["127.0.0.0/8", "::1/128"], "response_headers": {"set": {"X-Policy": "default"}}}
    gateway = gateway_process_factory({"GATEWAY_DEFAULT_POLICIES": json.dumps(defaults)})

    guarded = requests.get(f"{gateway}/gw/guarded/a", timeout=10)
    exempt = requests.get(f"{gateway}/gw/exempt/a", timeout=10)
    own = requests.get(f"{gateway}/gw/own/a", timeout=10)

    assert guarded.status_code == 403 and guarded.json()["type"].endswith("/ip-denied")
    assert exempt.status_code == 200 and own.status_code == 200  # the route's own rule replaces it
    assert {r.headers.get("X-Policy") for r in (guarded, exempt, own)} == {"default"}
    assert len(upstream.requests) == 2


def test_a_route_whose_stored_policies_do_not_validate_is_closed_not_served_without_them(
    http_server_factory, gateway_process_factory, token_service
):
    # given routes whose policies were written straight into the table (shell, SQL, or before a
    # rule was tightened), not through admin or load_routes, which refuse them
    upstream = http_server_factory(_ok)
    proxy_route(
        upstream.url,
        path="/forged/**",
        auth_required=True,
        policies={"request_headers": {"set": {"X-User-ID": "admin", "X-Tenant-ID": "root"}}},
    )
    # GET only: a preflight reaches this closed route by the method it asks about, not by OPTIONS
    proxy_route(
        upstream.url,
        path="/wildcard/**",
        methods=("GET",),
        policies={"cors": {"origins": ["*"], "credentials": True}},
    )
    # a valid IP rule next to a transform that is refused: the rule must not be dropped with it
    proxy_route(
        upstream.url,
        path="/walled/**",
        policies={
            "ip_deny": ["127.0.0.0/8", "::1/128"],
            "request_headers": {"set": {"X-Real-IP": "1.2.3.4"}},
        },
    )
    proxy_route(upstream.url, path="/fine/**")
    gateway = gateway_process_factory(token_service.env)

    forged = requests.get(
        f"{gateway}/gw/forged/a",
        headers={"Authorization": token_service.bearer(sub="alice", tenant_id="acme")},
        timeout=10,
    )
    evil = {"Origin": "https://evil.example"}
    wildcard = requests.get(f"{gateway}/gw/wildcard/a", headers=evil, timeout=10)
    preflight = requests.options(
        f"{gateway}/gw/wildcard/a", headers={**evil, "Access-Control-Request-Method": "GET"}, timeout=10
    )
    walled = requests.get(f"{gateway}/gw/walled/a", timeout=10)

    # then each of them is closed with a problem+json 503, and none reaches the upstream
    for answer in (walled, forged, wildcard, preflight):
        assert answer.status_code == 503, answer.text
        assert answer.headers["Content-Type"].startswith("application/problem+json")
        assert answer.json()["type"].endswith("/route-misconfigured")
        assert "Access-Control-Allow-Origin" not in answer.headers
    assert upstream.requests == []
    # and the other routes are served as before
    assert requests.get(f"{gateway}/gw/fine/a", timeout=10).status_code == 200


def test_a_bad_default_policy_set_stops_the_server(gateway_process_factory):
    bad = json.dumps({"request_headers": {"set": {"X-User-ID": "admin"}}})

    with pytest.raises(RuntimeError, match="exited"):
        gateway_process_factory({"GATEWAY_DEFAULT_POLICIES": bad})


def test_the_window_resets(http_server_factory, gateway_process_factory):
    # A short window instead of a minute: 2 per second, GCRA frees one slot every 0.5 s.
    upstream = http_server_factory(_ok)
    proxy_route(
        upstream.url,
        path="/short/**",
        policies={"rate_limit": {"limit": 2, "window_seconds": 1, "key": "ip"}},
    )
    gateway = gateway_process_factory()
    statuses = [requests.get(f"{gateway}/gw/short/a", timeout=10).status_code for _ in range(3)]
    assert statuses == [200, 200, 429]
    time.sleep(0.6)
    assert requests.get(f"{gateway}/gw/short/a", timeout=10).status_code == 200
    assert requests.get(f"{gateway}/gw/short/a", timeout=10).status_code == 429


def test_redis_down_still_limits_locally(http_server_factory, gateway_process_factory):
    upstream = http_server_factory(_ok)
    proxy_route(
        upstream.url,
        path="/local/**",
        policies={"rate_limit": {"limit": 3, "window_seconds": 60, "key": "route"}},
    )
    gateway = gateway_process_factory({"REDIS_URL": f"redis://127.0.0.1:{free_port()}/4", "WEB_WORKERS": "1"})
    statuses = [requests.get(f"{gateway}/gw/local/{n}", timeout=10).status_code for n in range(5)]
    assert statuses == [200, 200, 200, 429, 429]
    ready = requests.get(f"{gateway}/readyz", timeout=10).json()
    assert ready["checks"]["rate_limits"] == "unavailable: RateLimitsLocal"


def test_cors_preflight_is_answered_by_the_gateway(
    http_server_factory, gateway_process_factory, token_service
):
    upstream = http_server_factory(_ok)
    cors = {
        "origins": ["https://app.example"],
        "methods": ["GET", "POST"],
        "headers": ["Content-Type", "Authorization"],
        "expose_headers": ["X-Request-Cost"],
        "credentials": True,
        "max_age": 300,
    }
    proxy_route(
        upstream.url, path="/cors/**", methods=("GET", "POST"), auth_required=True, policies={"cors": cors}
    )
    gateway = gateway_process_factory(token_service.env)
    asking = {"Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "content-type"}

    allowed = requests.options(
        f"{gateway}/gw/cors/a", headers={"Origin": "https://app.example", **asking}, timeout=10
    )
    assert allowed.status_code == 204  # no token, no upstream
    assert allowed.headers["Access-Control-Allow-Origin"] == "https://app.example"
    assert allowed.headers["Access-Control-Allow-Methods"] == "GET, POST"
    assert allowed.headers["Access-Control-Allow-Headers"] == "Content-Type, Authorization"
    assert allowed.headers["Access-Control-Allow-Credentials"] == "true"
    assert allowed.headers["Access-Control-Max-Age"] == "300"
    assert "Origin" in allowed.headers["Vary"]

    other = requests.options(
        f"{gateway}/gw/cors/a", headers={"Origin": "https://evil.example", **asking}, timeout=10
    )
    assert other.status_code == 403
    assert not [name for name in other.headers if name.lower().startswith("access-control-")]
    assert upstream.requests == []

    actual = requests.get(
        f"{gateway}/gw/cors/a",
        headers={"Origin": "https://app.example", "Authorization": token_service.bearer()},
        timeout=10,
    )
    assert actual.status_code == 200
    assert actual.headers["Access-Control-Allow-Origin"] == "https://app.example"
    assert actual.headers["Access-Control-Expose-Headers"] == "X-Request-Cost"
    assert "Origin" in actual.headers["Vary"]
    foreign = requests.get(
        f"{gateway}/gw/cors/a",
        headers={"Origin": "https://evil.example", "Authorization": token_service.bearer()},
        timeout=10,
    )
    assert foreign.status_code == 200
    assert "Access-Control-Allow-Origin" not in foreign.headers


def test_denied_cidr_is_refused_before_the_token_check(
    http_server_factory, gateway_process_factory, token_service
):
    upstream = http_server_factory(_ok)
    proxy_route(
        upstream.url, path="/deny/**", auth_required=True, policies={"ip_deny": ["127.0.0.0/8", "::1/128"]}
    )
    proxy_route(upstream.url, path="/open/**", auth_required=True, policies={"ip_deny": ["10.0.0.0/8"]})
    gateway = gateway_process_factory(token_service.env)

    denied = requests.get(f"{gateway}/gw/deny/a", timeout=10)  # no token at all
    assert denied.status_code == 403
    assert denied.json()["type"].endswith("/ip-denied")
    assert "WWW-Authenticate" not in denied.headers
    assert requests.get(f"{gateway}/gw/open/a", timeout=10).status_code == 401  # the token check comes next
    assert upstream.requests == []


@pytest.mark.parametrize("trusted", [False, True])
def test_forwarded_for_is_believed_only_from_trusted_peers(
    http_server_factory, gateway_process_factory, trusted
):
    upstream = http_server_factory(_ok)
    proxy_route(upstream.url, path="/office/**", policies={"ip_allow": ["10.0.0.0/8"]})
    proxy_route(
        upstream.url,
        path="/perip/**",
        policies={"rate_limit": {"limit": 2, "window_seconds": 60, "key": "ip"}},
    )
    gateway = gateway_process_factory({"FORWARDED_ALLOW_IPS": "127.0.0.1/32" if trusted else ""})

    office = requests.get(f"{gateway}/gw/office/a", headers={"X-Forwarded-For": "10.1.2.3"}, timeout=10)
    statuses = [
        requests.get(
            f"{gateway}/gw/perip/a", headers={"X-Forwarded-For": f"203.0.113.{n}"}, timeout=10
        ).status_code
        for n in range(3)
    ]
    if trusted:
        assert office.status_code == 200
        assert statuses == [200, 200, 200]  # three clients behind a trusted proxy
    else:
        assert office.status_code == 403  # the peer is 127.0.0.1 whatever the header says
        assert statuses == [200, 200, 429]  # one client, whatever addresses it claims


def test_traceparent_is_continued_and_sent_upstream(http_server_factory, gateway_process_factory):
    upstream = http_server_factory(_ok)
    proxy_route(upstream.url, path="/traced/**")
    gateway = gateway_process_factory()
    parent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"

    requests.get(f"{gateway}/gw/traced/a", headers={"traceparent": parent, "tracestate": "k=v"}, timeout=10)
    requests.get(f"{gateway}/gw/traced/b", headers={"traceparent": "00-zz-bad"}, timeout=10)
    requests.get(f"{gateway}/gw/traced/c", timeout=10)

    continued, replaced, started = (r.header("traceparent") for r in upstream.requests)
    version, trace_id, span_id, flags = continued.split("-")
    assert (version, trace_id, flags) == ("00", "4bf92f3577b34da6a3ce929d0e0e4736", "01")
    assert span_id != "00f067aa0ba902b7" and len(span_id) == 16
    assert upstream.requests[0].header("tracestate") == "k=v"
    assert len(upstream.requests[0].header_all("traceparent")) == 1
    for value in (replaced, started):
        assert len(value.split("-")[1]) == 32 and value.split("-")[1] != trace_id
