"""OpenAPI descriptions of the project's authentication schemes (drf-spectacular extensions) and of
the internal endpoints' cross-field rules (a postprocessing hook)."""

from typing import Any

from drf_spectacular.extensions import OpenApiAuthenticationExtension


class BearerTokenScheme(OpenApiAuthenticationExtension):
    target_class = "gateway.authentication.BearerTokenAuthentication"
    name = "bearerAuth"

    def get_security_definition(self, auto_schema):  # type: ignore[no-untyped-def]
        return {"type": "http", "scheme": "bearer", "bearerFormat": "JWT (RS256 or ES256)"}


class InternalTokenScheme(OpenApiAuthenticationExtension):
    target_class = "gateway.authentication.InternalTokenAuthentication"
    name = "internalToken"

    def get_security_definition(self, auto_schema):  # type: ignore[no-untyped-def]
        return {"type": "http", "scheme": "bearer", "description": "GATEWAY_INTERNAL_TOKEN"}


def internal_rules_hook(result: dict[str, Any], **_: Any) -> dict[str, Any]:
    """Rules across fields that the serializers check in `validate()`, written into their
    components so the schema and the validation agree: a revocation takes `expires_at` or `ttl`,
    not both; an RBAC invalidation names a user (`user_id`, optional `tenant_id`) or `all: true`."""
    schemas = result.get("components", {}).get("schemas", {})
    revocation = schemas.get("RevocationCreateInput")
    if revocation is not None:
        revocation["not"] = {"required": ["expires_at", "ttl"]}
        revocation["description"] = (
            "Give `expires_at` (the token's `exp`) or `ttl`, not both; neither: the longest token lifetime."
        )
    rbac = schemas.get("RbacUpdatedInput")
    if rbac is not None:
        properties = rbac.get("properties", {})
        rbac.clear()
        rbac.update(
            {
                "description": "One user in one tenant (`user_id`, optional `tenant_id`), "
                "or everyone (`all: true`).",
                "oneOf": [
                    {
                        "type": "object",
                        "title": "one user",
                        "properties": {
                            "user_id": properties["user_id"],
                            "tenant_id": properties["tenant_id"],
                            "all": {"type": "boolean", "enum": [False]},
                        },
                        "required": ["user_id"],
                    },
                    {
                        "type": "object",
                        "title": "everyone",
                        "properties": {"all": {"type": "boolean", "enum": [True]}},
                        "required": ["all"],
                        "not": {"required": ["user_id"]},
                    },
                ],
            }
        )
    operation = result.get("paths", {}).get("/internal/rbac/updated", {}).get("post", {})
    if "requestBody" in operation:
        operation["requestBody"]["required"] = True  # an empty body names nobody: 400
    return result
