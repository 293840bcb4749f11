"""The Idempotency-Key header: required, bare or quoted, 1–255 printable ASCII."""

from __future__ import annotations

import pytest

from idempotency.models import IdempotencyRecord

pytestmark = [pytest.mark.django_db, pytest.mark.urls("tests.idempotency.urls")]

URL = "/t/public-things"
BODY = {"name": "widget"}


def test_missing_key_on_required_endpoint_is_400_and_nothing_runs(post, executions):
    response = post(URL, BODY)

    assert response.status_code == 400
    assert response["Content-Type"] == "application/problem+json"
    assert response.json()["type"].endswith("/idempotency-key-missing")
    assert executions == 0
    assert IdempotencyRecord.objects.count() == 0


@pytest.mark.parametrize(
    "header",
    [
        pytest.param("", id="empty"),
        pytest.param('""', id="empty-quoted"),
        pytest.param("k" * 256, id="too-long-bare"),
        pytest.param('"' + "k" * 256 + '"', id="too-long-quoted"),
        pytest.param("abc\x01def", id="control-char"),
        pytest.param("abc\tdef", id="tab"),
        pytest.param("clé-1", id="non-ascii"),
        pytest.param('"unterminated', id="unterminated-quote"),
        pytest.param('"a"b"', id="unescaped-inner-quote"),
        pytest.param('"a\\nb"', id="bad-escape"),
        pytest.param('"tab\tinside"', id="quoted-control-char"),
    ],
)
def test_invalid_key_is_400_problem_and_nothing_runs(post, executions, header):
    response = post(URL, BODY, key=header)

    assert response.status_code == 400
    body = response.json()
    assert body["type"].endswith("/idempotency-key-invalid")
    assert body["status"] == 400
    assert executions == 0
    assert IdempotencyRecord.objects.count() == 0


def test_longest_valid_bare_key_is_accepted(post, executions):
    response = post(URL, BODY, key="k" * 255)

    assert response.status_code == 201
    assert IdempotencyRecord.objects.get().key == "k" * 255


def test_quoted_and_bare_forms_name_the_same_key(post, executions):
    first = post(URL, BODY, key='"order-42"')
    second = post(URL, BODY, key="order-42")

    assert first.status_code == second.status_code == 201
    assert second["Idempotent-Replayed"] == "true"
    assert second.content == first.content
    assert executions == 1
    assert IdempotencyRecord.objects.get().key == "order-42"


def test_quoted_key_unescapes_structured_field_escapes(post):
    response = post(URL, BODY, key='"a\\"b\\\\c"')

    assert response.status_code == 201
    assert IdempotencyRecord.objects.get().key == 'a"b\\c'


def test_key_is_optional_where_the_endpoint_says_so(post, executions):
    first = post("/t/optional-things", BODY)
    second = post("/t/optional-things", BODY)

    assert first.status_code == second.status_code == 201
    assert "Idempotent-Replayed" not in second
    assert executions == 2
    assert IdempotencyRecord.objects.count() == 0


def test_openapi_schema_documents_the_header(client):
    import yaml

    schema = yaml.safe_load(client.get("/api/schema").content)

    required = schema["paths"]["/t/things"]["post"]["parameters"]
    optional = schema["paths"]["/t/optional-things"]["post"]["parameters"]
    assert {k: required[0][k] for k in ("in", "name", "required")} == {
        "in": "header",
        "name": "Idempotency-Key",
        "required": True,
    }
    assert optional[0]["name"] == "Idempotency-Key"
    assert not optional[0].get("required", False)
