import io
import re

import pytest
import yaml
from django.core.management import call_command

pytestmark = pytest.mark.django_db


def test_openapi_schema_is_valid_and_generated_without_warnings():
    # --fail-on-warn turns every drf-spectacular guess (an undescribed body, a colliding
    # component name) into a failure, so a new endpoint cannot silently publish a wrong schema.
    out = io.StringIO()
    call_command("spectacular", "--validate", "--fail-on-warn", stdout=out)

    schema = yaml.safe_load(out.getvalue())
    components = schema["components"]["schemas"]
    # nested InputSerializer/OutputSerializer classes are named after their view, not "Input"
    assert {"OrderCreateInput", "OrderOutput", "RevocationCreateInput"} <= set(components)
    assert "Input" not in components
    assert schema["components"]["securitySchemes"]["bearerAuth"]["scheme"] == "bearer"
    assert schema["paths"]["/internal/revocations"]["post"]["security"] == [{"internalToken": []}]


def _schema() -> dict:
    out = io.StringIO()
    call_command("spectacular", "--validate", stdout=out)
    return yaml.safe_load(out.getvalue())


def test_order_list_is_documented_as_the_paginated_envelope_with_bounded_parameters():
    schema = _schema()
    operation = schema["paths"]["/api/orders"]["get"]
    ref = operation["responses"]["200"]["content"]["application/json"]["schema"]["$ref"]
    envelope = schema["components"]["schemas"][ref.rsplit("/", 1)[1]]
    assert {"count", "next", "previous", "results"} <= set(envelope["properties"])
    parameters = {p["name"]: p["schema"] for p in operation["parameters"]}
    assert parameters["limit"]["minimum"] == 1 and parameters["limit"]["maximum"] == 200
    assert parameters["offset"]["minimum"] == 0


def test_every_error_response_is_the_shared_problem_json_component():
    schema = _schema()
    problem = schema["components"]["schemas"]["Problem"]
    assert {"type", "title", "status", "detail", "correlation_id"} <= set(problem["required"])
    assert "errors" in problem["properties"]
    for path, operations in schema["paths"].items():
        for method, operation in operations.items():
            errors = {code: r for code, r in operation["responses"].items() if code[0] in "45"}
            assert {"400", "500"} <= set(errors), (method, path)
            for code, response in errors.items():
                assert list(response["content"]) == ["application/problem+json"], (method, path, code)
                assert response["content"]["application/problem+json"]["schema"]["$ref"].endswith("/Problem")
    orders = schema["paths"]["/api/orders"]
    assert {"401", "409", "415"} <= set(orders["post"]["responses"])
    assert "404" in schema["paths"]["/api/orders/{order_id}"]["get"]["responses"]
    assert "409" in schema["paths"]["/api/orders/{order_id}/cancel"]["post"]["responses"]
    assert "401" in schema["paths"]["/api/payments/events"]["post"]["responses"]


def test_idempotency_key_has_its_length_and_character_rules():
    import re

    schema = _schema()
    (key,) = [
        p for p in schema["paths"]["/api/orders"]["post"]["parameters"] if p["name"] == "Idempotency-Key"
    ]
    assert key["required"] is True
    assert (key["schema"]["minLength"], key["schema"]["maxLength"]) == (1, 255)
    pattern = re.compile(key["schema"]["pattern"])
    assert pattern.match("order-2026-12-07") and pattern.match("a b")
    assert not pattern.match(" a") and not pattern.match('"quoted') and not pattern.match("é")


def test_order_create_body_types_are_strict_in_the_schema():
    components = _schema()["components"]["schemas"]
    body, item = components["OrderCreateInput"], components["OrderCreateInputItem"]
    assert body["properties"]["items"]["minItems"] == 1 and body["properties"]["items"]["maxItems"] == 500
    assert body["properties"]["delivery_address"]["maxLength"] == 2000
    assert item["properties"]["quantity"]["type"] == "integer"
    assert item["properties"]["unit_price"]["type"] == "string"
    assert item["properties"]["unit_price"]["pattern"] == r"^[0-9]{1,10}(\.[0-9]{1,2})?$"


def test_view_docstrings_do_not_leak_into_operation_descriptions():
    from orders.apis import OrderCollectionApi

    schema = _schema()
    text = yaml.safe_dump(schema["paths"])
    assert OrderCollectionApi.__doc__.split(";")[0] not in text
    assert "each keeps its own view class" not in text
    for operations in schema["paths"].values():
        for operation in operations.values():
            assert "view class" not in operation.get("description", "")


def test_api_docs_use_bundled_swagger_assets_no_cdn(client):
    response = client.get("/api/docs")
    html = response.content.decode()

    assert response.status_code == 200
    assert "cdn.jsdelivr.net" not in html and "unpkg.com" not in html and "https://" not in html.lower()
    assets = re.findall(r'(?:src|href)="(/static/[^"]+)"', html)
    assert any(a.endswith("swagger-ui-bundle.js") for a in assets), assets
    for asset in assets:
        served = client.get(asset)
        assert served.status_code == 200, asset
        assert b"".join(served.streaming_content if served.streaming else [served.content])
