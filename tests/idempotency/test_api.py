"""@idempotent on a DRF view: replay, conflicts, scoping, what is stored and what is released."""

from __future__ import annotations

import pytest
from django.utils import timezone
from freezegun import freeze_time

from idempotency.models import IdempotencyRecord
from idempotency.services import IdempotentRequest, idempotency_begin, idempotency_request_hash
from outbox.models import OutboxEvent
from tests.idempotency.views import AGGREGATE

pytestmark = [pytest.mark.django_db, pytest.mark.urls("tests.idempotency.urls")]

URL = "/t/things"
PUBLIC = "/t/public-things"
BODY = {"name": "widget"}


@pytest.fixture
def alice(token_service):
    return token_service.auth_header(sub="alice", tenant_id="t-1")


def test_replay_is_byte_identical_with_replayed_header(post, executions, alice):
    first = post(URL, BODY, key="k-1", **alice)
    second = post(URL, BODY, key="k-1", **alice)

    assert first.status_code == 201
    assert "Idempotent-Replayed" not in first
    assert second.status_code == 201
    assert second["Idempotent-Replayed"] == "true"
    assert second.content == first.content
    assert second["Content-Type"] == first["Content-Type"] == "application/json"
    assert second["Location"] == first["Location"] == "/t/things/1"
    assert executions == 1
    record = IdempotencyRecord.objects.get()
    assert record.status == IdempotencyRecord.Status.COMPLETED
    assert record.scope == "user:alice|tenant:t-1"
    assert bytes(record.response_body) == first.content


def test_replays_are_read_from_memory_then_redis_then_the_database(
    post, executions, alice, django_capture_on_commit_callbacks
):
    from django.core.cache import cache

    from common.local_cache import reset_all_local_caches
    from idempotency.cache import cache_key

    def replay_from() -> str:
        before = {source: _replays(source) for source in ("local", "redis", "database")}
        response = post(URL, BODY, key="k-path", **alice)
        assert response["Idempotent-Replayed"] == "true"
        assert response.content == first.content
        (source,) = [name for name, count in before.items() if _replays(name) == count + 1]
        return source

    with django_capture_on_commit_callbacks(execute=True):
        first = post(URL, BODY, key="k-path", **alice)
    shared = cache_key(scope="user:alice|tenant:t-1", key="k-path")

    assert cache.get(shared) is None  # not written through: most keys are never retried
    assert replay_from() == "local"  # this process filled its memory on completion
    reset_all_local_caches()
    assert replay_from() == "database"  # the source of truth; fills Redis and memory
    assert cache.get(shared) is not None
    reset_all_local_caches()
    assert replay_from() == "redis"  # another process would start here
    assert replay_from() == "local"
    assert executions == 1


def _replays(source: str) -> float:
    from prometheus_client import REGISTRY

    return REGISTRY.get_sample_value("idempotency_replays_total", {"entry": "api", "source": source}) or 0.0


def test_same_key_different_body_is_409_key_reused(post, executions, alice):
    post(URL, BODY, key="k-2", **alice)

    response = post(URL, {"name": "gadget"}, key="k-2", **alice)

    assert response.status_code == 409
    assert response["Content-Type"] == "application/problem+json"
    assert response.json()["type"].endswith("/idempotency-key-reused")
    assert executions == 1


def test_same_key_different_query_is_409_key_reused(post, executions, alice):
    post(URL, BODY, key="k-q", **alice)

    response = post(URL + "?dry=1", BODY, key="k-q", **alice)

    assert response.status_code == 409
    assert executions == 1


def test_mismatch_status_setting_switches_to_422(post, executions, alice, settings):
    settings.IDEMPOTENCY_MISMATCH_STATUS = 422
    post(URL, BODY, key="k-3", **alice)

    response = post(URL, {"name": "gadget"}, key="k-3", **alice)

    assert response.status_code == 422
    assert response.json()["type"].endswith("/idempotency-key-reused")
    assert response.json()["status"] == 422


def test_another_user_with_the_same_key_gets_a_fresh_execution(post, executions, alice, token_service):
    bob = token_service.auth_header(sub="bob", tenant_id="t-1")
    first = post(URL, BODY, key="shared-key", **alice)

    response = post(URL, BODY, key="shared-key", **bob)

    assert response.status_code == 201
    assert "Idempotent-Replayed" not in response
    assert response.json()["user"] == "bob"
    assert response.content != first.content
    assert executions == 2
    assert IdempotencyRecord.objects.filter(key="shared-key").count() == 2


def test_same_user_in_another_tenant_gets_a_fresh_execution(post, executions, alice, token_service):
    other_tenant = token_service.auth_header(sub="alice", tenant_id="t-2")
    post(URL, BODY, key="k-t", **alice)

    response = post(URL, BODY, key="k-t", **other_tenant)

    assert response.status_code == 201
    assert "Idempotent-Replayed" not in response
    assert executions == 2


def test_400_from_the_handler_is_stored_replayed_and_its_writes_rolled_back(post, executions, alice):
    first = post(URL, {"name": ""}, key="k-400", **alice)
    second = post(URL, {"name": ""}, key="k-400", **alice)

    assert first.status_code == 400
    assert first.json()["errors"]["name"]
    assert second.status_code == 400
    assert second["Idempotent-Replayed"] == "true"
    assert second.content == first.content
    assert second["Content-Type"] == "application/problem+json"
    assert executions == 1
    # the handler wrote an outbox event before validating: rolled back with the 400
    assert not OutboxEvent.objects.filter(aggregatetype=AGGREGATE).exists()


def test_committed_work_and_completed_record_go_together(post, alice):
    post(URL, BODY, key="k-w", **alice)

    assert OutboxEvent.objects.filter(aggregatetype=AGGREGATE).count() == 1
    assert IdempotencyRecord.objects.get().status == IdempotencyRecord.Status.COMPLETED


def test_a_crash_500_is_not_stored_and_a_retry_runs_again(post, executions, alice):
    executions.fail_next()
    body = {**BODY, "fail": "raise"}

    first = post(URL, body, key="k-500", **alice)

    assert first.status_code == 500
    assert first["Content-Type"] == "application/problem+json"
    assert IdempotencyRecord.objects.get().status == IdempotencyRecord.Status.FAILED
    assert not OutboxEvent.objects.filter(aggregatetype=AGGREGATE).exists()

    second = post(URL, body, key="k-500", **alice)

    assert second.status_code == 201
    assert "Idempotent-Replayed" not in second
    assert executions == 2
    assert IdempotencyRecord.objects.get().status == IdempotencyRecord.Status.COMPLETED


@pytest.mark.parametrize("status", [500, 503, 408, 425, 429, 401, 403])
def test_returned_transient_statuses_release_the_key(post, executions, alice, status):
    executions.fail_next()
    body = {**BODY, "fail": str(status)}

    first = post(URL, body, key=f"k-{status}", **alice)
    second = post(URL, body, key=f"k-{status}", **alice)

    assert first.status_code == status
    assert second.status_code == 201
    assert "Idempotent-Replayed" not in second
    assert executions == 2
    # the released attempt's writes were rolled back: one committed execution for the key
    assert OutboxEvent.objects.filter(aggregatetype=AGGREGATE).count() == 1
    assert IdempotencyRecord.objects.get().status == IdempotencyRecord.Status.COMPLETED


@pytest.mark.django_db(transaction=True)
def test_returned_503_is_rolled_back_by_the_real_commit_too(post, executions):
    # The decorator's atomic block is the outermost transaction here (no test-wrapping one).
    executions.fail_next()
    body = {**BODY, "fail": "503"}

    first = post(PUBLIC, body, key="k-503-tx")
    events_after_first = OutboxEvent.objects.filter(aggregatetype=AGGREGATE).count()
    second = post(PUBLIC, body, key="k-503-tx")

    assert first.status_code == 503
    assert events_after_first == 0
    assert second.status_code == 201
    assert executions == 2
    assert OutboxEvent.objects.filter(aggregatetype=AGGREGATE).count() == 1
    assert IdempotencyRecord.objects.get().status == IdempotencyRecord.Status.COMPLETED


def test_same_key_while_processing_is_409_in_progress_with_retry_after(post, executions, alice):
    # a request holding the key (claimed, still running)
    idempotency_begin(request=_fingerprint(URL, BODY, "k-busy", "user:alice|tenant:t-1"), entry="api")

    response = post(URL, BODY, key="k-busy", **alice)

    assert response.status_code == 409
    assert response.json()["type"].endswith("/idempotency-in-progress")
    assert int(response["Retry-After"]) >= 1
    assert executions == 0


def test_stale_processing_record_is_taken_over_after_the_lock_timeout(post, executions, settings):
    settings.IDEMPOTENCY_LOCK_TIMEOUT_SECONDS = 60
    with freeze_time(timezone.now()) as clock:
        # a process claimed the key and died
        idempotency_begin(request=_fingerprint(PUBLIC, BODY, "k-stale", "anonymous"), entry="api")
        clock.tick(59)
        assert post(PUBLIC, BODY, key="k-stale").status_code == 409

        clock.tick(2)
        response = post(PUBLIC, BODY, key="k-stale")

    assert response.status_code == 201
    assert "Idempotent-Replayed" not in response
    assert executions == 1
    assert IdempotencyRecord.objects.get().status == IdempotencyRecord.Status.COMPLETED


def test_stale_record_is_not_taken_over_by_a_different_request(post, executions):
    with freeze_time(timezone.now()) as clock:
        idempotency_begin(request=_fingerprint(PUBLIC, BODY, "k-stale2", "anonymous"), entry="api")
        clock.tick(3600)
        response = post(PUBLIC, {"name": "other"}, key="k-stale2")

    assert response.status_code == 409
    assert response.json()["type"].endswith("/idempotency-key-reused")
    assert executions == 0


def test_after_the_ttl_the_key_runs_fresh_even_with_another_body(post, executions, settings):
    settings.IDEMPOTENCY_TTL_HOURS = 24
    with freeze_time(timezone.now()) as clock:
        first = post(PUBLIC, BODY, key="k-ttl")
        clock.tick(24 * 3600 - 1)
        replay = post(PUBLIC, BODY, key="k-ttl")
        clock.tick(2)
        after_same = post(PUBLIC, BODY, key="k-ttl")
        clock.tick(24 * 3600 + 1)
        after_other = post(PUBLIC, {"name": "gadget"}, key="k-ttl")

    assert replay["Idempotent-Replayed"] == "true"
    assert replay.content == first.content
    assert after_same.status_code == 201
    assert "Idempotent-Replayed" not in after_same
    assert after_same.content != first.content
    assert after_other.status_code == 201
    assert executions == 3
    assert IdempotencyRecord.objects.count() == 1


def test_anonymous_scope_is_shared_on_public_endpoints(post, executions):
    first = post(PUBLIC, BODY, key="signup-1")
    second = post(PUBLIC, BODY, key="signup-1")

    assert second["Idempotent-Replayed"] == "true"
    assert second.content == first.content
    assert IdempotencyRecord.objects.get().scope == "anonymous"


def test_unauthenticated_request_is_refused_before_any_claim(post, executions):
    response = post(URL, BODY, key="k-anon")

    assert response.status_code == 401
    assert IdempotencyRecord.objects.count() == 0
    assert executions == 0


def _fingerprint(path: str, body: dict, key: str, scope: str) -> IdempotentRequest:
    import json

    return IdempotentRequest(
        scope=scope,
        key=key,
        method="POST",
        path=path,
        request_hash=idempotency_request_hash(
            method="POST", path=path, query=b"", body=json.dumps(body).encode()
        ),
    )


def test_claim_taken_over_mid_handler_rolls_the_handler_back(post, executions):
    response = post(PUBLIC, {**BODY, "fail": "steal"}, key="k-steal")

    assert response.status_code == 409
    assert response.json()["type"].endswith("/idempotency-in-progress")
    assert executions == 1
    # the handler's outbox event did not commit: the new owner's execution is the only one
    assert not OutboxEvent.objects.filter(aggregatetype=AGGREGATE).exists()
    assert IdempotencyRecord.objects.get().status == IdempotencyRecord.Status.PROCESSING


@pytest.mark.django_db(transaction=True)
def test_claim_taken_over_before_a_raised_error_is_409_in_progress_not_the_stale_error(post, executions):
    response = post(PUBLIC, {**BODY, "fail": "steal-then-invalid"}, key="k-steal-400")

    assert response.status_code == 409
    assert response.json()["type"].endswith("/idempotency-in-progress")
    assert int(response["Retry-After"]) >= 1
    assert executions == 1
    assert not OutboxEvent.objects.filter(aggregatetype=AGGREGATE).exists()
    # the new owner's record is untouched: neither completed with our 400 nor released
    record = IdempotencyRecord.objects.get()
    assert record.status == IdempotencyRecord.Status.PROCESSING
    assert record.response_status is None


def test_metrics_count_records_replays_conflicts_and_in_progress(post, client):
    def sample(name: str, **labels: str) -> float:
        from prometheus_client import REGISTRY

        return REGISTRY.get_sample_value(name, labels) or 0.0

    before = {
        "created": sample("idempotency_records_created_total", entry="api", kind="new"),
        "replays": sample("idempotency_replays_total", entry="api", source="database")
        + sample("idempotency_replays_total", entry="api", source="local"),
        "conflicts": sample("idempotency_conflicts_total", entry="api"),
        "busy": sample("idempotency_in_progress_total", entry="api"),
    }
    post(PUBLIC, BODY, key="m-1")
    post(PUBLIC, BODY, key="m-1")
    post(PUBLIC, {"name": "other"}, key="m-1")
    idempotency_begin(request=_fingerprint(PUBLIC, BODY, "m-2", "anonymous"), entry="api")
    post(PUBLIC, BODY, key="m-2")

    assert sample("idempotency_records_created_total", entry="api", kind="new") == before["created"] + 2
    replays = sample("idempotency_replays_total", entry="api", source="database") + sample(
        "idempotency_replays_total", entry="api", source="local"
    )
    assert replays == before["replays"] + 1
    assert sample("idempotency_conflicts_total", entry="api") == before["conflicts"] + 1
    assert sample("idempotency_in_progress_total", entry="api") == before["busy"] + 1
    exposed = client.get("/metrics").content.decode()
    assert "idempotency_replays_total" in exposed
    assert "idempotency_conflicts_total" in exposed
