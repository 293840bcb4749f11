"""OpenAPI generation shared by every app: component names, descriptions, problem+json errors."""

from __future__ import annotations

from typing import Any

from drf_spectacular.openapi import AutoSchema as _AutoSchema
from rest_framework import serializers

from common.errors import PROBLEM_CONTENT_TYPE


class AutoSchema(_AutoSchema):
    """Names a view's nested serializer after its view (`OrderCreateInput`, not `Input`).

    CONVENTIONS nests `InputSerializer` / `OutputSerializer` in each APIView, so the default
    class-name components would collide across views and describe the wrong bodies.
    """

    def get_serializer_name(self, serializer: serializers.Serializer, direction: str) -> str:
        parts = type(serializer).__qualname__.split(".")
        if len(parts) == 1 or "<locals>" in parts:
            return super().get_serializer_name(serializer, direction)
        view = parts[0].removesuffix("Api").removesuffix("View")
        return view + "".join(part.removesuffix("Serializer") for part in parts[1:])

    def get_description(self) -> str:
        # Only what an operation states in extend_schema(description=…) is published: view
        # docstrings are notes for whoever maintains the code, not for API clients.
        return ""


PROBLEM_COMPONENT = "Problem"
PROBLEM_SCHEMA: dict[str, Any] = {
    "type": "object",
    "description": "RFC 9457 problem details; every error of this API has this shape.",
    "properties": {
        "type": {"type": "string", "format": "uri", "description": "Identifies the kind of problem."},
        "title": {"type": "string"},
        "status": {"type": "integer", "minimum": 400, "maximum": 599},
        "detail": {"type": "string"},
        "correlation_id": {"type": "string", "description": "The request's X-Correlation-ID."},
        "errors": {
            "type": "object",
            "description": "Validation errors only (400 validation-error): field name → messages "
            "(a list of strings, or for nested objects and lists the same map one level down).",
            "additionalProperties": {},
        },
    },
    "required": ["type", "title", "status", "detail", "correlation_id"],
}

# What each status means in this API; an operation gets the ones that can reach it.
_ERROR_DESCRIPTIONS = {
    "400": "Malformed JSON or invalid fields (`errors` lists them), or an invalid header.",
    "401": "Missing, invalid, expired or revoked credentials.",
    "403": "Authenticated but not allowed.",
    "404": "No such resource (another owner's resource is indistinguishable from none).",
    "406": "The Accept header asks for a media type this API does not produce.",
    "409": "Conflicts with the resource's state, or the Idempotency-Key is in use: its first "
    "request is still in progress, or it was used with a different request.",
    "413": "Request body too large.",
    "415": "The request body is not application/json.",
    "422": "The Idempotency-Key was already used with a different request (when "
    "IDEMPOTENCY_MISMATCH_STATUS is 422).",
    "500": "Unexpected server error.",
    "503": "A dependency (token keys, payment secret, database) is unavailable; retry later.",
}
_BODY_METHODS = {"post", "put", "patch"}


def _problem_response(code: str) -> dict[str, Any]:
    return {
        "description": _ERROR_DESCRIPTIONS[code],
        "content": {PROBLEM_CONTENT_TYPE: {"schema": {"$ref": f"#/components/schemas/{PROBLEM_COMPONENT}"}}},
    }


def problem_responses_hook(
    result: dict[str, Any], generator: Any, request: Any, public: bool
) -> dict[str, Any]:
    """drf-spectacular postprocessing hook: document the problem+json errors of every operation.

    Which codes an operation gets follows from what it has: a body (400, 413, 415), path
    parameters (404), security (401, 403), an Idempotency-Key (409, 422); every operation can
    answer 400 (a bad header or query), 406, 500 and 503. Codes an operation documents itself
    keep their description but take the problem+json content.
    """
    result.setdefault("components", {}).setdefault("schemas", {})[PROBLEM_COMPONENT] = PROBLEM_SCHEMA
    for path, operations in result.get("paths", {}).items():
        for method, operation in operations.items():
            if not isinstance(operation, dict) or "responses" not in operation:
                continue
            codes = {"400", "406", "500", "503"}
            if method in _BODY_METHODS:
                codes |= {"413", "415"}
            if "{" in path:
                codes.add("404")
            if operation.get("security") and {} not in operation["security"]:
                codes |= {"401", "403"}
            headers = {p["name"].lower() for p in operation.get("parameters", []) if p.get("in") == "header"}
            if "x-signature" in headers:
                codes.add("401")
            if "idempotency-key" in headers:
                codes |= {"409", "422"}
            responses = operation["responses"]
            for code in sorted(codes | {c for c in responses if c[0] in "45"}):
                documented = responses.get(code, {})
                problem = (
                    _problem_response(code)
                    if code in _ERROR_DESCRIPTIONS
                    else {
                        "description": documented.get("description") or "Error.",
                        "content": _problem_response("500")["content"],
                    }
                )
                if documented.get("description"):
                    problem["description"] = documented["description"]
                responses[code] = problem
    return result
