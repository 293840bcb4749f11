import pytest

pytestmark = pytest.mark.django_db


def test_unknown_path_is_problem_json_with_correlation_id(client):
    # when
    response = client.get("/no-such-thing", HTTP_X_REQUEST_ID="abc-123")

    # then
    assert response.status_code == 404
    assert response["Content-Type"] == "application/problem+json"
    body = response.json()
    assert body["status"] == 404
    assert body["correlation_id"] == "abc-123"
    assert response["X-Correlation-ID"] == "abc-123"


def test_junk_correlation_id_is_replaced(client):
    response = client.get("/healthz", HTTP_X_CORRELATION_ID="bad id\nwith newline")

    assert response.status_code == 200
    assert response["X-Correlation-ID"] != "bad id\nwith newline"
    assert len(response["X-Correlation-ID"]) == 32


def test_healthz_and_readyz(client):
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200, ready.content
    checks = ready.json()["checks"]
    assert {name: checks[name] for name in ("database", "cache", "broker")} == {
        "database": "ok",
        "cache": "ok",
        "broker": "ok",
    }


def test_metrics_is_prometheus_text(client):
    response = client.get("/metrics")
    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/plain")
    assert b"python_info" in response.content
