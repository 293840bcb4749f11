"""Idempotency on gateway routes (`idempotency = optional | required`), through the production
server's /gw."""

from __future__ import annotations

import itertools
import json
import threading
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

import pytest
import requests
from django.utils import timezone
from prometheus_client.parser import text_string_to_metric_families

from idempotency.models import IdempotencyRecord
from idempotency.services import idempotency_request_hash
from tests.gateway.proxy_support import proxy_route
from tests.support.servers import Reply

pytestmark = pytest.mark.django_db(transaction=True)

BODY = b'{"email": "ada@example.com"}'


class CountingUpstream:
    """201 with a body unique to each call; `fail_next` answers the next calls with a status."""

    def __init__(self, http_server_factory, *, delay: float = 0.0) -> None:
        self.delay = delay
        self.failures: list[int] = []
        self._numbers = itertools.count(1)
        self._lock = threading.Lock()
        self.server = http_server_factory(self._handle)
        self.url = self.server.url

    @property
    def calls(self) -> int:
        return len(self.server.requests)

    def _handle(self, request) -> Reply:
        with self._lock:
            number = next(self._numbers)
            status = self.failures.pop(0) if self.failures else 201
        if status != 201:
            return Reply(status, b'{"error": "later"}', headers=[("Content-Type", "application/json")])
        body = json.dumps({"account": number, "seen": request.body.decode()}).encode()
        return Reply(
            201,
            body,
            headers=[
                ("Content-Type", "application/json; charset=utf-8"),
                ("Location", f"/accounts/{number}"),
            ],
            delay=self.delay,
        )


# The server process outlives each test's database and keeps completed records in its memory
# layer (5 min): every test's keys get a prefix of their own, so none replays another test's answer.
_key_prefix = {"value": ""}


@pytest.fixture(autouse=True)
def _keys_of_this_test():
    _key_prefix["value"] = f"{uuid.uuid4().hex[:8]}-"


def _key(key: str) -> str:
    return _key_prefix["value"] + key


def _post(gw, path: str, key: str | None = None, body: bytes = BODY, **extra):
    if key is not None:
        extra["HTTP_IDEMPOTENCY_KEY"] = _key(key)
    return gw.post(path, data=body, content_type="application/json", **extra)


def test_required_route_calls_upstream_once_for_any_number_of_retries(gw, http_server_factory):
    upstream = CountingUpstream(http_server_factory)
    proxy_route(upstream.url, path="/register", idempotency="required")

    first = _post(gw, "/gw/register", "signup-1")
    retries = [_post(gw, "/gw/register", "signup-1") for _ in range(5)]

    assert first.status_code == 201
    assert "Idempotent-Replayed" not in first
    for retry in retries:
        assert retry.status_code == 201
        assert retry["Idempotent-Replayed"] == "true"
        assert retry.content == first.content
        assert retry["Content-Type"] == "application/json; charset=utf-8"
        assert retry["Location"] == "/accounts/1"
    assert upstream.calls == 1
    record = IdempotencyRecord.objects.get()
    assert (record.scope, record.path, record.status) == ("anonymous", "/register", "completed")


def test_required_route_without_key_is_400_and_upstream_untouched(gw, http_server_factory):
    upstream = CountingUpstream(http_server_factory)
    proxy_route(upstream.url, path="/register", idempotency="required")

    response = _post(gw, "/gw/register")

    assert response.status_code == 400
    assert response.json()["type"].endswith("/idempotency-key-missing")
    assert upstream.calls == 0


def test_invalid_key_on_gateway_is_400(gw, http_server_factory):
    upstream = CountingUpstream(http_server_factory)
    proxy_route(upstream.url, path="/register", idempotency="optional")

    response = _post(gw, "/gw/register", "x" * 256)

    assert response.status_code == 400
    assert response.json()["type"].endswith("/idempotency-key-invalid")
    assert upstream.calls == 0


def test_optional_route_without_key_just_proxies(gw, http_server_factory):
    upstream = CountingUpstream(http_server_factory)
    proxy_route(upstream.url, path="/register", idempotency="optional")

    statuses = [_post(gw, "/gw/register").status_code for _ in range(3)]

    assert statuses == [201, 201, 201]
    assert upstream.calls == 3
    assert IdempotencyRecord.objects.count() == 0


def test_route_with_idempotency_off_ignores_the_key(gw, http_server_factory):
    upstream = CountingUpstream(http_server_factory)
    proxy_route(upstream.url, path="/register")

    _post(gw, "/gw/register", "k")
    _post(gw, "/gw/register", "k")

    assert upstream.calls == 2


def test_safe_methods_on_a_required_route_need_no_key(gw, http_server_factory):
    upstream = CountingUpstream(http_server_factory)
    proxy_route(upstream.url, path="/register", idempotency="required")

    response = gw.get("/gw/register")

    assert response.status_code == 201
    assert IdempotencyRecord.objects.count() == 0


def test_same_key_with_another_body_is_409_and_upstream_not_called_again(gw, http_server_factory):
    upstream = CountingUpstream(http_server_factory)
    proxy_route(upstream.url, path="/register", idempotency="required")
    _post(gw, "/gw/register", "signup-2")

    response = _post(gw, "/gw/register", "signup-2", body=b'{"email": "bob@example.com"}')

    assert response.status_code == 409
    assert response["Content-Type"] == "application/problem+json"
    assert response.json()["type"].endswith("/idempotency-key-reused")
    assert upstream.calls == 1


def test_upstream_503_releases_the_key_and_a_retry_calls_upstream_again(gw, http_server_factory):
    upstream = CountingUpstream(http_server_factory)
    upstream.failures = [503]
    proxy_route(upstream.url, path="/register", idempotency="required", retry_count=0)

    first = _post(gw, "/gw/register", "signup-3")

    assert first.status_code == 503
    assert IdempotencyRecord.objects.get().status == IdempotencyRecord.Status.FAILED

    second = _post(gw, "/gw/register", "signup-3")
    third = _post(gw, "/gw/register", "signup-3")

    assert second.status_code == 201
    assert "Idempotent-Replayed" not in second
    assert third["Idempotent-Replayed"] == "true"
    assert upstream.calls == 2


@pytest.mark.parametrize("status", [408, 429])
def test_upstream_408_and_429_are_not_stored(gw, http_server_factory, status):
    upstream = CountingUpstream(http_server_factory)
    upstream.failures = [status]
    proxy_route(upstream.url, path="/register", idempotency="required", retry_count=0)

    assert _post(gw, "/gw/register", "k").status_code == status
    assert _post(gw, "/gw/register", "k").status_code == 201
    assert upstream.calls == 2


def test_upstream_404_is_stored_and_replayed(gw, http_server_factory):
    upstream = CountingUpstream(http_server_factory)
    upstream.failures = [404]
    proxy_route(upstream.url, path="/register", idempotency="required", retry_count=0)

    first = _post(gw, "/gw/register", "k")
    second = _post(gw, "/gw/register", "k")

    assert first.status_code == second.status_code == 404
    assert second["Idempotent-Replayed"] == "true"
    assert upstream.calls == 1


def test_upstream_timeout_releases_the_key(gw, http_server_factory):
    upstream = CountingUpstream(http_server_factory, delay=1.0)
    proxy_route(upstream.url, path="/register", idempotency="required", retry_count=0, timeout_ms=200)

    first = _post(gw, "/gw/register", "signup-4")
    upstream.delay = 0

    assert first.status_code == 504
    assert IdempotencyRecord.objects.get().status == IdempotencyRecord.Status.FAILED
    second = _post(gw, "/gw/register", "signup-4")
    assert second.status_code == 201
    assert upstream.calls == 2


def test_streamed_upstream_response_is_buffered_and_replayed_byte_for_byte(gw, http_server_factory):
    chunks = [b"part-%d;" % index for index in range(50)]
    upstream = http_server_factory(
        lambda request: Reply(201, iter(chunks), headers=[("Content-Type", "text/plain")])
    )
    proxy_route(upstream.url, path="/export", idempotency="required")

    first = _post(gw, "/gw/export", "export-1")
    first_body = first.content
    second = _post(gw, "/gw/export", "export-1")

    assert first_body == b"".join(chunks)
    assert second.content == first_body
    assert second["Idempotent-Replayed"] == "true"
    assert len(upstream.requests) == 1


def test_response_over_the_size_cap_reaches_the_client_but_is_not_replayed(gw_server, http_server_factory):
    gw = gw_server({"IDEMPOTENCY_MAX_RESPONSE_BYTES": "1000"})
    chunks = [b"x" * 300] * 10
    upstream = http_server_factory(
        lambda request: Reply(201, iter(chunks), headers=[("Content-Type", "text/plain")])
    )
    proxy_route(upstream.url, path="/export", idempotency="required")

    first = _post(gw, "/gw/export", "export-2")
    first_body = first.content
    second = _post(gw, "/gw/export", "export-2")

    assert first.status_code == 201
    assert first_body == b"x" * 3000
    assert second.status_code == 409
    assert second.json()["type"].endswith("/idempotency-response-unavailable")
    assert len(upstream.requests) == 1


def test_users_do_not_share_keys_on_authenticated_routes(gw_server, http_server_factory, token_service):
    gw = gw_server(token_service.env)
    upstream = CountingUpstream(http_server_factory)
    proxy_route(upstream.url, path="/transfers", idempotency="required", auth_required=True)
    alice = token_service.auth_header(sub="alice", tenant_id="t-1", permissions=[])
    bob = token_service.auth_header(sub="bob", tenant_id="t-1", permissions=[])

    a1 = _post(gw, "/gw/transfers", "tx-1", **alice)
    b1 = _post(gw, "/gw/transfers", "tx-1", **bob)
    a2 = _post(gw, "/gw/transfers", "tx-1", **alice)

    assert "Idempotent-Replayed" not in b1
    assert b1.content != a1.content
    assert a2["Idempotent-Replayed"] == "true"
    assert a2.content == a1.content
    assert upstream.calls == 2
    assert set(IdempotencyRecord.objects.values_list("scope", flat=True)) == {
        "user:alice|tenant:t-1",
        "user:bob|tenant:t-1",
    }


@pytest.mark.django_db(transaction=True)
@pytest.mark.slow
def test_concurrent_retries_through_two_gateway_processes_reach_upstream_once(
    http_server_factory, gateway_process_factory
):
    upstream = CountingUpstream(http_server_factory, delay=0.7)
    proxy_route(upstream.url, path="/register", idempotency="required")
    gateways = [gateway_process_factory(), gateway_process_factory()]
    clients = 30
    barrier = threading.Barrier(clients)

    def one(index: int) -> requests.Response:
        barrier.wait(timeout=30)
        return requests.post(
            f"{gateways[index % 2]}/gw/register",
            data=BODY,
            headers={"Content-Type": "application/json", "Idempotency-Key": "signup-burst"},
            timeout=60,
        )

    with ThreadPoolExecutor(max_workers=clients) as pool:
        responses = list(pool.map(one, range(clients)))

    statuses = sorted(r.status_code for r in responses)
    originals = [r for r in responses if r.status_code == 201 and "Idempotent-Replayed" not in r.headers]
    assert len(originals) == 1, statuses
    assert set(statuses) <= {201, 409}, statuses
    for response in responses:
        if response.status_code == 201:
            assert response.content == originals[0].content
        else:
            assert response.json()["type"].endswith("/idempotency-in-progress")
    assert upstream.calls == 1


def test_large_response_under_the_cap_is_replayed_byte_for_byte(gw, http_server_factory):
    body = bytes(range(256)) * 400  # 100 KiB: above the per-process memory layer's body limit
    upstream = http_server_factory(
        lambda request: Reply(201, body, headers=[("Content-Type", "application/octet-stream")])
    )
    proxy_route(upstream.url, path="/export", idempotency="required")

    first = _post(gw, "/gw/export", "export-big")
    replays = [_post(gw, "/gw/export", "export-big") for _ in range(2)]

    assert first.status_code == 201
    assert first.content == body
    for replay in replays:
        assert replay["Idempotent-Replayed"] == "true"
        assert replay.content == body
        assert replay["Content-Type"] == "application/octet-stream"
    assert len(upstream.requests) == 1


def _held_by_a_running_request(key: str, path: str = "/register", body: bytes = BODY) -> None:
    """The record a request still running on another gateway process holds (no metrics counted)."""
    now = timezone.now()
    IdempotencyRecord.objects.create(
        scope="anonymous",
        key=_key(key),
        method="POST",
        path=path,
        request_hash=idempotency_request_hash(method="POST", path=path, query=b"", body=body),
        status=IdempotencyRecord.Status.PROCESSING,
        locked_at=now,
        locked_until=now + timedelta(seconds=60),
        created_at=now,
        expires_at=now + timedelta(hours=24),
    )


def test_same_key_while_processing_on_gateway_is_409_in_progress_with_retry_after(gw, http_server_factory):
    upstream = CountingUpstream(http_server_factory)
    proxy_route(upstream.url, path="/register", idempotency="required")
    _held_by_a_running_request("signup-busy")

    response = _post(gw, "/gw/register", "signup-busy")

    assert response.status_code == 409
    assert response["Content-Type"] == "application/problem+json"
    assert response.json()["type"].endswith("/idempotency-in-progress")
    assert int(response["Retry-After"]) >= 1
    assert upstream.calls == 0
    assert IdempotencyRecord.objects.get().status == IdempotencyRecord.Status.PROCESSING


def _counters(scrape: str, entry: str) -> dict[str, float]:
    """Idempotency figures of `entry` in a /metrics scrape of the server."""
    samples = {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(scrape)
        for sample in family.samples
    }

    def _sample(name: str, **labels: str) -> float:
        return samples.get((name, tuple(sorted(labels.items()))), 0.0)

    return {
        "new": _sample("idempotency_records_created_total", entry=entry, kind="new"),
        "takeover": _sample("idempotency_records_created_total", entry=entry, kind="takeover"),
        "failed": _sample("idempotency_outcomes_total", entry=entry, outcome="failed"),
        "completed": _sample("idempotency_outcomes_total", entry=entry, outcome="completed"),
        "replays": sum(
            _sample("idempotency_replays_total", entry=entry, source=source)
            for source in ("local", "redis", "database")
        ),
        "conflicts": _sample("idempotency_conflicts_total", entry=entry),
        "in_progress": _sample("idempotency_in_progress_total", entry=entry),
    }


def test_metrics_are_labelled_with_the_gateway_entry(gw, http_server_factory):
    # given
    upstream = CountingUpstream(http_server_factory)
    upstream.failures = [503]
    proxy_route(upstream.url, path="/register", idempotency="required", retry_count=0)
    _held_by_a_running_request("m-busy")
    gw.sync()
    before = gw.metrics()
    gateway_before, api_before = _counters(before, "gateway"), _counters(before, "api")

    # when
    assert _post(gw, "/gw/register", "m-1").status_code == 503  # new, failed
    assert _post(gw, "/gw/register", "m-1").status_code == 201  # takeover, completed
    assert _post(gw, "/gw/register", "m-1")["Idempotent-Replayed"] == "true"
    assert _post(gw, "/gw/register", "m-1", body=b'{"email": "bob@example.com"}').status_code == 409
    assert _post(gw, "/gw/register", "m-busy").status_code == 409

    # then
    after = gw.metrics()
    gateway_after = _counters(after, "gateway")
    assert {name: gateway_after[name] - gateway_before[name] for name in gateway_after} == {
        "new": 1,
        "takeover": 1,
        "failed": 1,
        "completed": 1,
        "replays": 1,
        "conflicts": 1,
        "in_progress": 1,
    }
    assert _counters(after, "api") == api_before
    exposed = gw.metrics()
    assert 'idempotency_records_created_total{entry="gateway",kind="new"}' in exposed
    assert 'idempotency_in_progress_total{entry="gateway"}' in exposed
