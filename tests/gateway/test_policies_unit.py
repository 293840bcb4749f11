"""Each policy kind's validate/compile, the limiter (injected clock, real Redis), client address,
and validation through admin and load_routes."""

from __future__ import annotations

import asyncio
import io
import json
import uuid

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.urls import reverse

from gateway.models import Route
from gateway.policies.base import PolicyRequest, PolicyState
from gateway.policies.client_address import client_address
from gateway.policies.rate_limit import Limiter
from gateway.policies.registry import BY_NAME, EMPTY, policies_compile, policies_errors
from gateway.policies.tracing import trace_context
from gateway.services.headers import upstream_request_headers
from tests.gateway.factories import ServiceFactory


def _request(**fields) -> PolicyRequest:
    values = {"method": "GET", "path": "/a", "headers": (), "client_ip": "127.0.0.1", "route_id": 1}
    values.update(fields)
    return PolicyRequest(**values)


@pytest.mark.parametrize(
    ("kind", "config", "problem"),
    [
        ("rate_limit", {"limit": 0, "window_seconds": 60}, "limit:"),
        ("rate_limit", {"limit": 5, "window_seconds": 60, "key": "session"}, "key:"),
        ("rate_limit", {"limit": 5}, "window_seconds:"),
        ("rate_limit", {"limit": 5, "window_seconds": 60, "burst": 2}, "unknown key"),
        ("cors", {"origins": ["*"], "credentials": True}, 'not with origin "*"'),
        ("cors", {"origins": ["https://app.example/path"]}, "is not an origin"),
        ("cors", {"origins": ["https://a.example"], "methods": ["FETCH"]}, "methods:"),
        ("cors", {"origins": []}, "origins:"),
        ("ip_allow", ["10.0.0.0/33"], "not an IPv4 or IPv6"),
        ("ip_deny", [], "non-empty list"),
        ("request_headers", {"set": {"X-User-ID": "admin"}}, "identity or hop-by-hop"),
        ("request_headers", {"remove": ["X-Tenant-ID"]}, "identity or hop-by-hop"),
        ("request_headers", {"set": {"Connection": "close"}}, "identity or hop-by-hop"),
        ("response_headers", {"set": {"Transfer-Encoding": "chunked"}}, "identity or hop-by-hop"),
        ("request_headers", {"set": {"X-Forwarded-For": "10.0.0.1"}}, "written by the gateway"),
        ("request_headers", {"remove": ["Forwarded"]}, "written by the gateway"),
        ("request_headers", {"set": {"traceparent": "00-" + "1" * 32 + "-" + "2" * 16 + "-01"}}, "gateway"),
        ("response_headers", {"set": {"X-Correlation-ID": "fixed"}}, "written by the gateway"),
        ("response_headers", {"set": {"X-A": "line\nbreak"}}, "control characters"),
    ],
)
def test_validation_refuses(kind, config, problem):
    errors = BY_NAME[kind].validate(config)
    assert any(problem in error for error in errors), errors
    assert problem in " ".join(policies_errors({kind: config})[kind])


def test_unknown_kind_is_refused():
    assert "unknown policy" in policies_errors({"throttle": {}})[""][0]


@pytest.mark.parametrize(
    ("kind", "config"),
    [
        ("rate_limit", {"limit": 100, "window_seconds": 60, "key": "tenant"}),
        ("cors", {"origins": ["*"], "methods": ["GET"], "max_age": 0}),
        ("cors", {"origins": ["https://app.example", "http://localhost:3000"], "credentials": True}),
        ("ip_allow", ["10.0.0.0/8", "2001:db8::/32", "192.0.2.1"]),
        ("request_headers", {"set": {"X-Api-Version": "2"}, "remove": ["Cookie"]}),
        ("response_headers", {"set": {"Cache-Control": "no-store"}, "remove": ["Server"]}),
    ],
)
def test_valid_configs_compile(kind, config):
    assert BY_NAME[kind].validate(config) == []
    compiled = policies_compile({kind: config})
    assert compiled


def test_a_route_without_policies_compiles_to_empty_phases():
    compiled = policies_compile({})
    assert compiled is EMPTY
    assert not compiled and compiled.ip == compiled.limit == compiled.response == ()


def test_ip_rules_v4_and_v6():
    allow = BY_NAME["ip_allow"].compile(["10.0.0.0/8", "2001:db8::/32"])
    deny = BY_NAME["ip_deny"].compile(["10.9.0.0/16"])
    state = PolicyState()
    assert allow.ip(_request(client_ip="10.1.2.3"), state) is None
    assert allow.ip(_request(client_ip="2001:db8::5"), state) is None
    assert allow.ip(_request(client_ip="192.0.2.1"), state).status == 403
    assert allow.ip(_request(client_ip="not-an-ip"), state).status == 403
    assert deny.ip(_request(client_ip="10.9.1.1"), state).status == 403
    assert deny.ip(_request(client_ip="10.8.1.1"), state) is None


def test_transforms_apply_in_order():
    compiled = BY_NAME["request_headers"].compile({"set": {"X-Api-Version": "2"}, "remove": ["Cookie"]})
    headers = compiled.upstream(_request(), [("Cookie", "a=1"), ("X-Api-Version", "1"), ("Accept", "*/*")])
    assert headers == [("Accept", "*/*"), ("X-Api-Version", "2")]


def test_cors_star_without_credentials_answers_star():
    compiled = BY_NAME["cors"].compile({"origins": ["*"]})
    preflight = _request(
        method="OPTIONS", headers=(("Origin", "https://x.example"), ("Access-Control-Request-Method", "GET"))
    )
    answer = compiled.preflight(preflight, PolicyState())
    assert answer.status == 204
    assert ("Access-Control-Allow-Origin", "*") in answer.headers
    assert ("Vary", "Origin") in answer.headers


def test_client_address_trusts_forwarded_for_only_from_allowed_peers(settings):
    settings.FORWARDED_ALLOW_IPS = ["10.0.0.0/8"]
    assert client_address(peer="10.0.0.1", forwarded_for="203.0.113.9") == "203.0.113.9"
    # the right-most untrusted hop: what the client wrote left of it is not believed
    assert client_address(peer="10.0.0.1", forwarded_for="1.1.1.1, 203.0.113.9, 10.0.0.2") == "203.0.113.9"
    assert client_address(peer="192.0.2.7", forwarded_for="203.0.113.9") == "192.0.2.7"
    assert client_address(peer="::ffff:192.0.2.7", forwarded_for=None) == "192.0.2.7"
    settings.FORWARDED_ALLOW_IPS = []
    assert client_address(peer="10.0.0.1", forwarded_for="203.0.113.9") == "10.0.0.1"


def test_client_address_with_every_peer_trusted(settings):
    # "*" is a valid FORWARDED_ALLOW_IPS (headers.trusted_proxies); the policies once raised on it
    settings.FORWARDED_ALLOW_IPS = ["*"]
    assert client_address(peer="10.0.0.1", forwarded_for="203.0.113.9") == "203.0.113.9"
    assert client_address(peer="192.0.2.7", forwarded_for=None) == "192.0.2.7"
    # a peer that is no address (a unix socket behind a proxy): the chain still names the client
    assert client_address(peer="", forwarded_for="203.0.113.9") == "203.0.113.9"
    sent = dict(
        upstream_request_headers(
            client_headers=[(b"x-forwarded-for", b"203.0.113.9")],
            peer="",
            scheme="http",
            host="gw",
            identity=None,
            correlation_id="c",
        )
    )
    assert sent["X-Forwarded-For"] == "203.0.113.9" and sent["X-Real-IP"] == "203.0.113.9"


@pytest.mark.parametrize(
    "peer, chain",
    [
        ("10.0.0.1", ["203.0.113.9"]),
        ("10.0.0.1", ["1.1.1.1, 203.0.113.9", "10.0.0.2"]),
        ("10.0.0.1", ["junk, 10.0.0.3"]),  # written by a trusted hop: the client is unknown
        ("10.0.0.1", ["junk, 203.0.113.9"]),  # the client's own junk, left of the hop: ignored
        ("10.0.0.1", ["203.0.113.9:4711"]),
        ("10.0.0.1", ["[2001:db8::7]:443"]),
        ("10.0.0.1", ["::ffff:198.51.100.4"]),
        ("10.0.0.1", ["10.0.0.9, 10.0.0.8"]),
        ("192.0.2.7", ["203.0.113.9"]),
        ("::ffff:10.0.0.1", ["203.0.113.9"]),
    ],
)
def test_x_real_ip_is_the_address_limits_and_ip_rules_use(settings, peer, chain):
    settings.FORWARDED_ALLOW_IPS = ["10.0.0.0/8"]
    sent = upstream_request_headers(
        client_headers=[(b"x-forwarded-for", value.encode()) for value in chain],
        peer=peer,
        scheme="http",
        host="gw",
        identity=None,
        correlation_id="c",
    )
    (real_ip,) = [value for name, value in sent if name == "X-Real-IP"]
    assert real_ip == client_address(peer=peer, forwarded_for=", ".join(chain))
    expected = {
        "junk, 10.0.0.3": "unknown",
        "203.0.113.9:4711": "203.0.113.9",
        "[2001:db8::7]:443": "2001:db8::7",
        "::ffff:198.51.100.4": "198.51.100.4",
        "10.0.0.9, 10.0.0.8": "10.0.0.9",
    }
    if peer.startswith("192."):
        assert real_ip == peer
    else:
        assert real_ip == expected.get(chain[-1], "203.0.113.9")


def test_traceparent_parsing():
    kept = trace_context("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00")
    assert kept.trace_id == "4bf92f3577b34da6a3ce929d0e0e4736" and kept.flags == "00"
    assert kept.span_id != "00f067aa0ba902b7"
    for bad in (
        "00-" + "0" * 32 + "-00f067aa0ba902b7-01",
        "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        "junk",
    ):
        assert trace_context(bad).trace_id != "4bf92f3577b34da6a3ce929d0e0e4736"
    assert len(trace_context(None).traceparent()) == 55


class _Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def _limit_round(limiter: Limiter, key: str, count: int) -> list[int]:
    return [limiter.hit(key, 12_000, 60_000)[0] for _ in range(count)]


def test_limiter_window_with_an_injected_clock():
    from django.conf import settings

    clock = _Clock()
    limiter = Limiter(url=settings.REDIS_URL, clock=clock)  # the real Redis, our clock
    assert _limit_round(limiter, "ratelimit:t:clock", 6) == [1, 1, 1, 1, 1, 0]
    refused = limiter.hit("ratelimit:t:clock", 12_000, 60_000)
    assert refused[2] == 12_000  # retry after one emission interval
    clock.now += 12
    assert _limit_round(limiter, "ratelimit:t:clock", 2) == [1, 0]
    clock.now += 60
    assert _limit_round(limiter, "ratelimit:t:clock", 6) == [1, 1, 1, 1, 1, 0]
    assert limiter.down_since is None


def test_limiter_falls_back_to_local_counting_and_async_matches():
    clock = _Clock()
    down = Limiter(url="redis://127.0.0.1:1/0", clock=clock)
    assert _limit_round(down, "k", 6) == [1, 1, 1, 1, 1, 0]
    assert down.down_since is not None

    from django.conf import settings

    shared = Limiter(url=settings.REDIS_URL, clock=clock)

    async def run() -> list[int]:
        return [(await shared.hit_async("ratelimit:t:async", 12_000, 60_000))[0] for _ in range(6)]

    assert asyncio.run(run()) == [1, 1, 1, 1, 1, 0]
    assert shared.hit("ratelimit:t:async", 12_000, 60_000)[0] == 0  # one count for both variants


def _counting_round_trips(monkeypatch) -> list[int]:  # noqa: ANN001
    """The number of scripts each Redis round trip of the async limiter carries."""
    from gateway.policies import rate_limit

    trips: list[int] = []
    send = rate_limit._Batcher._send

    async def counted(self, batch):  # noqa: ANN001, ANN202
        trips.append(len(batch))
        return await send(self, batch)

    monkeypatch.setattr(rate_limit._Batcher, "_send", counted)
    return trips


def test_a_hot_key_leases_cells_and_is_counted_exactly_near_its_limit(monkeypatch):
    from django.conf import settings

    trips = _counting_round_trips(monkeypatch)
    clock = _Clock()
    key = f"ratelimit:t:lease:{uuid.uuid4().hex}"
    # two instances on one key, 10 000 requests a second between them, limit 1000 per 10 minutes
    # (0.15 s of requests: no cell comes back meanwhile)
    first, second = (Limiter(url=settings.REDIS_URL, clock=clock, lease_seconds=0.005) for _ in range(2))

    async def run(count: int) -> list[int]:
        admitted = []
        for n in range(count):
            clock.now += 0.0001
            limiter = (first, second)[n % 2]
            admitted.append((await limiter.hit_async(key, 600, 600_000))[0])
        return admitted

    admitted = asyncio.run(run(1000))
    trips_to_the_limit = len(trips)
    admitted += asyncio.run(run(200))

    assert sum(admitted) == 1000  # exactly the limit: leases never admit more, none left unspent
    assert admitted[:1000] == [1] * 1000
    assert trips_to_the_limit < 1000 / 4  # most requests spent a leased cell, no round trip


def test_the_unspent_cells_of_an_expired_lease_are_given_back(monkeypatch):
    from django.conf import settings

    trips = _counting_round_trips(monkeypatch)
    clock = _Clock()
    limiter = Limiter(url=settings.REDIS_URL, clock=clock, lease_seconds=0.005)
    key = f"ratelimit:t:refund:{uuid.uuid4().hex}"
    interval, window = 10_000, 100_000_000  # 10 000 per 10^5 s: no cell comes back in a test

    async def hit() -> tuple:
        return await limiter.hit_async(key, interval, window)

    async def run() -> tuple:
        for _ in range(800):  # 20 000 a second: the key leases
            clock.now += 0.00005
            await hit()
        leased_trips = len(trips)
        clock.now += 1.0  # the lease expires with cells unspent
        return leased_trips, await hit()

    leased_trips, after = asyncio.run(run())

    assert leased_trips < 800 / 4
    assert after[0] == 1 and after[1] == 10_000 - 801  # exactly the 801 requests are spent


def test_a_key_seen_now_and_then_takes_one_cell_per_request(monkeypatch):
    from django.conf import settings

    trips = _counting_round_trips(monkeypatch)
    clock = _Clock()
    limiter = Limiter(url=settings.REDIS_URL, clock=clock)
    key = f"ratelimit:t:cold:{uuid.uuid4().hex}"

    async def run() -> list[int]:
        admitted = []
        for _ in range(12):
            clock.now += 1.0  # one request a second: no lease would be spent in time
            admitted.append((await limiter.hit_async(key, 6_000, 60_000))[0])
        return admitted

    assert asyncio.run(run()) == [1] * 10 + [1, 0]  # the 11th: one interval has passed
    assert len(trips) == 12


def test_requests_arriving_while_a_lease_is_on_its_way_wait_for_it(monkeypatch):
    """Under load a lease runs out while requests keep coming: one script run renews it for
    all of them, instead of one run per request that arrived during the round trip."""
    from django.conf import settings

    trips = _counting_round_trips(monkeypatch)
    clock = _Clock()
    limiter = Limiter(url=settings.REDIS_URL, clock=clock, lease_seconds=0.005)
    key = f"ratelimit:t:renew:{uuid.uuid4().hex}"
    interval, window = 10_000, 100_000_000  # 10 000 per 10^5 s: no cell comes back in a test

    async def run() -> tuple[int, list[tuple]]:
        sent = 0
        while sent < 400 or limiter._leases[key].cells:  # 20 000 a second: the key leases
            clock.now += 0.00005
            await limiter.hit_async(key, interval, window)
            sent += 1
        # its lease is spent, and 30 requests arrive together
        before = sum(trips)
        together = await asyncio.gather(*(limiter.hit_async(key, interval, window) for _ in range(30)))
        scripts = sum(trips) - before
        clock.now += 1.0  # that lease expires too: its unspent cells are given back
        return sent, scripts, together, await limiter.hit_async(key, interval, window)

    sent, scripts, together, after = asyncio.run(run())

    assert [result[0] for result in together] == [1] * 30
    assert scripts == 1  # the first one's script run leased cells for the other 29
    assert after[0] == 1 and after[1] == 10_000 - (sent + 31)  # exactly the requests are spent


def test_requests_waiting_on_a_trip_that_finds_redis_down_count_locally_at_once(monkeypatch):
    trips = _counting_round_trips(monkeypatch)
    limiter = Limiter(url="redis://127.0.0.1:1/0", clock=_Clock())  # nothing listens there
    key = f"ratelimit:t:down:{uuid.uuid4().hex}"

    async def run() -> list[tuple]:
        return await asyncio.gather(*(limiter.hit_async(key, 12_000, 60_000) for _ in range(8)))

    results = asyncio.run(run())

    assert [result[0] for result in results] == [1] * 5 + [0] * 3  # 5 a minute, counted locally
    assert trips == [1]  # one attempt at Redis for all eight, not one per waiting request
    assert limiter.down_since is not None


def test_the_policy_view_answers_from_the_pipelines_header_index():
    from gateway.policies.runner import policy_request

    headers = (
        ("Origin", "https://a.example"),
        ("X-Forwarded-For", "1.1.1.1"),
        ("x-forwarded-for", "2.2.2.2"),
    )
    index = {"origin": "https://a.example", "x-forwarded-for": "1.1.1.1, 2.2.2.2"}
    route = type("Route", (), {"id": 7, "path": "/a"})()
    scanned = policy_request(method="GET", path="/a", headers=headers, peer="10.0.0.1", route=route)
    indexed = policy_request(
        method="GET", path="/a", headers=headers, peer="10.0.0.1", route=route, lookup=index.get
    )

    assert indexed.header("Origin") == scanned.header("origin") == "https://a.example"
    assert indexed.header("ACCESS-CONTROL-REQUEST-METHOD") is None
    assert scanned.header("ACCESS-CONTROL-REQUEST-METHOD") is None
    # a repeated header reads the same either way: repeats joined (a duplicated Origin is refused)
    assert indexed.header("x-forwarded-for") == scanned.header("X-Forwarded-For") == "1.1.1.1, 2.2.2.2"
    assert indexed.client_ip == scanned.client_ip


def test_concurrent_hits_share_a_round_trip_and_each_counts_once(monkeypatch):
    from django.conf import settings

    trips = _counting_round_trips(monkeypatch)
    limiter = Limiter(url=settings.REDIS_URL, clock=_Clock())
    import redis

    redis.Redis.from_url(settings.REDIS_URL).script_flush()  # the pipeline reloads it (NOSCRIPT)
    keys = [f"ratelimit:t:many:{uuid.uuid4().hex}" for _ in range(3)]

    async def run() -> list[tuple]:
        return await asyncio.gather(*(limiter.hit_async(keys[n % 3], 20_000, 60_000) for n in range(12)))

    results = asyncio.run(run())

    assert trips[0] > 1  # one pipeline for the requests that arrived together
    for n, key in enumerate(keys):  # 3 per key per minute: 4 hits each, the last refused
        assert [result[0] for result in results[n::3]] == [1, 1, 1, 0], key
    assert limiter.down_since is None


@pytest.mark.django_db
def test_load_routes_refuses_a_transform_of_an_identity_header(tmp_path):
    ServiceFactory(name="svc", targets=["http://127.0.0.1:9001"])
    path = tmp_path / "routes.json"
    path.write_text(
        json.dumps(
            {
                "routes": [
                    {
                        "method": "GET",
                        "path": "/x",
                        "backend": "svc",
                        "x-request-headers": {"set": {"X-User-ID": "admin"}},
                        "x-rate-limit": {"limit": 5, "window_seconds": 60},
                    }
                ]
            }
        )
    )
    err = io.StringIO()
    with pytest.raises(CommandError, match="nothing was changed"):
        call_command("load_routes", str(path), stderr=err)
    assert "x-request-headers: set: X-User-ID is an identity or hop-by-hop header" in err.getvalue()
    assert not Route.objects.exists()


@pytest.mark.django_db
def test_load_and_export_policies_round_trip(tmp_path):
    ServiceFactory(name="svc", targets=["http://127.0.0.1:9001"])
    entry = {
        "method": "GET",
        "path": "/x",
        "backend": "svc",
        "x-rate-limit": {"limit": 5, "window_seconds": 60, "key": "ip"},
        "x-cors": {"origins": ["https://app.example"]},
        "x-ip-allow": ["10.0.0.0/8"],
        "x-ip-deny": ["10.9.0.0/16"],
        "x-request-headers": {"set": {"X-Api": "2"}},
        "x-response-headers": {"remove": ["Server"]},
    }
    path = tmp_path / "routes.json"
    path.write_text(json.dumps({"routes": [entry]}))
    call_command("load_routes", str(path))
    route = Route.objects.get(path="/x")
    assert route.policies["rate_limit"] == entry["x-rate-limit"]
    out = io.StringIO()
    call_command("export_routes", stdout=out)
    exported = json.loads(out.getvalue())["routes"][0]
    for key in (
        "x-rate-limit",
        "x-cors",
        "x-ip-allow",
        "x-ip-deny",
        "x-request-headers",
        "x-response-headers",
    ):
        assert exported[key] == entry[key]


@pytest.mark.django_db
def test_admin_form_shows_policy_errors(admin_client):
    service = ServiceFactory()
    data = {
        "methods": ["GET"],
        "path": "/admin-policy",
        "service": service.pk,
        "auth_required": "on",
        "condition": "{}",
        "timeout_ms": 3000,
        "retry_count": 2,
        "cache_ttl_seconds": 0,
        "idempotency": "off",
        "priority": 0,
        "enabled": "on",
        "policies": json.dumps(
            {
                "request_headers": {"set": {"X-User-ID": "admin"}},
                "cors": {"origins": ["*"], "credentials": True},
            }
        ),
    }
    response = admin_client.post(reverse("admin:gateway_route_add"), data)
    assert response.status_code == 200
    errors = " ".join(response.context["adminform"].form.errors["policies"])
    assert "X-User-ID is an identity or hop-by-hop header" in errors
    assert 'not with origin "*"' in errors
    assert not Route.objects.filter(path="/admin-policy").exists()
    data["policies"] = json.dumps({"rate_limit": {"limit": 5, "window_seconds": 60}})
    assert admin_client.post(reverse("admin:gateway_route_add"), data).status_code == 302
    assert Route.objects.get(path="/admin-policy").policies["rate_limit"]["limit"] == 5


@pytest.mark.django_db
def test_manage_check_names_the_routes_the_gateway_closes():
    good = ServiceFactory().routes.create(path="/good/**", methods=["GET"], policies={})
    bad = ServiceFactory().routes.create(path="/bad/**", methods=["GET"], policies={})
    Route.objects.filter(pk=bad.pk).update(policies={"request_headers": {"set": {"X-Real-IP": "1.2.3.4"}}})

    warned = io.StringIO()
    call_command("check", databases=["default"], stderr=warned)  # a warning: it stops nothing
    assert f"route #{bad.pk} (/bad/**)" in warned.getvalue() and "gateway.W001" in warned.getvalue()
    assert f"route #{good.pk} " not in warned.getvalue()
    quiet = io.StringIO()
    call_command("check", stderr=quiet)  # without the database, nothing is read
    assert "gateway.W001" not in quiet.getvalue()


@pytest.mark.django_db
def test_the_check_and_the_gateway_agree_on_which_routes_are_closed(settings):
    from gateway.policies.registry import CLOSED, route_policies
    from gateway.selectors import route_resolved, route_resolved_list

    settings.GATEWAY_DEFAULT_POLICIES = {"ip_deny": ["10.0.0.0/8"]}
    dropped = ServiceFactory().routes.create(path="/dropped/**", methods=["GET"], policies={"ip_deny": None})
    junk = ServiceFactory().routes.create(path="/junk/**", methods=["GET"], policies={})
    Route.objects.filter(pk=junk.pk).update(policies="not an object")  # written by SQL
    junk.refresh_from_db()

    warned = io.StringIO()
    call_command("check", databases=["default"], stderr=warned)

    # {"ip_deny": null} drops a default: served, and not named
    assert route_policies(route_resolved(route=dropped)) is not CLOSED
    assert f"route #{dropped.pk} " not in warned.getvalue()
    # a value that is not an object closes that route only; the table still builds
    assert route_policies(route_resolved(route=junk)) is CLOSED
    assert f"route #{junk.pk} (/junk/**)" in warned.getvalue()
    assert {r.id for r in route_resolved_list()} >= {dropped.pk, junk.pk}
