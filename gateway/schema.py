"""OpenAPI descriptions of the project's authentication schemes (drf-spectacular extensions)."""

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
