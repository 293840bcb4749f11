"""/internal bodies: strict JSON types, no blank jti, the user-or-all rule; each refusal is a 400
problem+json that changes nothing."""

from __future__ import annotations

import pytest

from gateway.models import RevokedToken

pytestmark = pytest.mark.django_db

SECRET = "internal-secret"


def _post(client, settings, path: str, body: dict):  # noqa: ANN001
    settings.GATEWAY_INTERNAL_TOKEN = SECRET
    return client.post(path, body, content_type="application/json", HTTP_AUTHORIZATION=f"Bearer {SECRET}")


@pytest.mark.parametrize(
    "body",
    [
        {"jti": ""},
        {"jti": "   "},
        {"jti": "\t\n"},
        {"jti": 5},
        {"jti": ["a"]},
        {"jti": "j", "ttl": "60"},
        {"jti": "j", "ttl": 60.0},
        {"jti": "j", "ttl": True},
        {"jti": "j", "ttl": 60, "expires_at": "2030-01-01T00:00:00Z"},
    ],
)
def test_a_bad_revocation_is_400_and_records_nothing(client, settings, body):
    response = _post(client, settings, "/internal/revocations", body)

    assert response.status_code == 400
    assert response["Content-Type"] == "application/problem+json"
    assert response.json()["status"] == 400
    assert not RevokedToken.objects.exists()


def test_a_revocation_with_a_padded_jti_keeps_it_as_sent(client, settings):
    response = _post(client, settings, "/internal/revocations", {"jti": " j-1 ", "ttl": 60})

    assert response.status_code == 201
    assert RevokedToken.objects.get().jti == " j-1 "


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"all": False},
        {"all": "true"},
        {"all": 1},
        {"user_id": "u1", "all": True},
        {"user_id": 7},
        {"user_id": ""},
        {"user_id": "  "},
        {"user_id": "u1", "tenant_id": 3},
    ],
)
def test_a_bad_rbac_invalidation_is_400(client, settings, body):
    response = _post(client, settings, "/internal/rbac/updated", body)

    assert response.status_code == 400
    assert response["Content-Type"] == "application/problem+json"


@pytest.mark.parametrize("body", [{"all": True}, {"user_id": "u1"}, {"user_id": "u1", "tenant_id": ""}])
def test_a_user_or_everyone_is_accepted(client, settings, body):
    response = _post(client, settings, "/internal/rbac/updated", body)

    assert response.status_code == 202
    assert response.json()["event"] == "rbac.updated"


def test_the_schema_states_the_rules(client):
    schema = client.get("/api/schema?format=json").json()
    components = schema["components"]["schemas"]

    rbac = components["RbacUpdatedInput"]
    assert [branch["required"] for branch in rbac["oneOf"]] == [["user_id"], ["all"]]
    assert schema["paths"]["/internal/rbac/updated"]["post"]["requestBody"]["required"] is True
    revocation = components["RevocationCreateInput"]
    assert revocation["not"] == {"required": ["expires_at", "ttl"]}
    assert revocation["properties"]["jti"]["minLength"] == 1 and "pattern" in revocation["properties"]["jti"]
