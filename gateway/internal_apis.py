"""Endpoints for the token service and IAM to push changes: revocations, key rotation, RBAC updates.

Authenticated with the shared secret `GATEWAY_INTERNAL_TOKEN` (`Authorization: Bearer …`).
"""

from __future__ import annotations

from django.urls import path
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import extend_schema
from rest_framework import serializers
from rest_framework.permissions import IsAuthenticated
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from common.errors import ServiceUnavailable
from common.serializer_fields import (
    StrictBooleanField,
    StrictCharField,
    StrictIntegerField,
    StrictStringField,
)
from gateway.authentication import InternalTokenAuthentication


class _InternalAPIView(APIView):
    authentication_classes = [InternalTokenAuthentication]
    permission_classes = [IsAuthenticated]


class RevocationCreateApi(_InternalAPIView):
    class InputSerializer(serializers.Serializer):
        # Strict JSON types; a blank or whitespace-only jti is a 400 (the schema's pattern says so).
        jti = StrictCharField(max_length=255)
        expires_at = serializers.DateTimeField(required=False, help_text="The token's own exp.")
        ttl = StrictIntegerField(
            required=False, min_value=1, max_value=366 * 24 * 3600, help_text="Seconds; not with expires_at."
        )

        def validate(self, attrs: dict) -> dict:
            if "expires_at" in attrs and "ttl" in attrs:
                raise serializers.ValidationError("Give expires_at or ttl, not both.")
            return attrs

    class OutputSerializer(serializers.Serializer):
        jti = serializers.CharField()
        expires_at = serializers.DateTimeField()

    @extend_schema(request=InputSerializer, responses={201: OutputSerializer})
    def post(self, request: Request) -> Response:
        from gateway.services.revocation import token_revoke

        serializer = self.InputSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        data = serializer.validated_data
        revoked = token_revoke(
            jti=data["jti"], expires_at=data.get("expires_at"), ttl_seconds=data.get("ttl")
        )
        return Response(self.OutputSerializer(revoked).data, status=201)


class JwksRotatedApi(_InternalAPIView):
    """`jwt.jwks.rotated`: refetch the key set now and have every instance use it."""

    @extend_schema(request=None, responses={202: OpenApiTypes.OBJECT})
    def post(self, request: Request) -> Response:
        from gateway.services.jwks import JwksUnavailable, jwks_refresh

        try:
            keys = jwks_refresh()
        except JwksUnavailable as exc:
            raise ServiceUnavailable("The JWKS could not be fetched.") from exc
        return Response({"event": "jwt.jwks.rotated", "keys": keys}, status=202)


class RbacUpdatedApi(_InternalAPIView):
    """`rbac.updated`: forget cached permissions of one user in one tenant, or of everyone."""

    class InputSerializer(serializers.Serializer):
        # Either {"user_id": …, "tenant_id": …} or {"all": true}: the schema states it as a oneOf
        # (gateway.schema.internal_rules_hook).
        user_id = StrictCharField(required=False, max_length=255)
        tenant_id = StrictStringField(required=False, max_length=255, allow_blank=True)
        all = StrictBooleanField(required=False, default=False)

        def validate(self, attrs: dict) -> dict:
            if attrs["all"] == ("user_id" in attrs):
                raise serializers.ValidationError("Give user_id (and tenant_id), or all: true.")
            return attrs

    @extend_schema(request=InputSerializer, responses={202: OpenApiTypes.OBJECT})
    def post(self, request: Request) -> Response:
        from gateway.services.rbac import rbac_invalidate

        serializer = self.InputSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        data = serializer.validated_data
        if data["all"]:
            deleted = rbac_invalidate()
        else:
            deleted = rbac_invalidate(user_id=data["user_id"], tenant_id=data.get("tenant_id", ""))
        return Response({"event": "rbac.updated", "deleted": deleted}, status=202)


urlpatterns = [
    path("revocations", RevocationCreateApi.as_view(), name="internal-revocations"),
    path("jwks/rotated", JwksRotatedApi.as_view(), name="internal-jwks-rotated"),
    path("rbac/updated", RbacUpdatedApi.as_view(), name="internal-rbac-updated"),
]
