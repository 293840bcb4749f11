"""OpenAPI generation shared by every app."""

from drf_spectacular.openapi import AutoSchema as _AutoSchema
from rest_framework import serializers


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
