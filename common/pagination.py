"""Limit/offset pagination that refuses what it cannot honour instead of silently ignoring it."""

from __future__ import annotations

from typing import Any

from rest_framework.exceptions import ValidationError
from rest_framework.pagination import LimitOffsetPagination
from rest_framework.request import Request


class StrictLimitOffsetPagination(LimitOffsetPagination):
    """`?limit=` 1…max_limit and `?offset=` ≥ 0, decimal digits only; anything else is a 400.

    DRF's own class falls back to the default for `limit=abc` or `offset=-1`, so a client's
    mistake would pass unnoticed (and the schema's bounds would be a lie).
    """

    default_limit = 50
    max_limit = 200
    max_offset = 10**9

    def _read(self, request: Request, name: str, *, minimum: int, maximum: int) -> int | None:
        raw = request.query_params.get(name)
        if raw is None:
            return None
        if not (raw.isascii() and raw.isdigit()) or not minimum <= int(raw) <= maximum:
            raise ValidationError({name: [f"Must be an integer from {minimum} to {maximum}."]})
        return int(raw)

    def get_limit(self, request: Request) -> int:
        limit = self._read(request, self.limit_query_param, minimum=1, maximum=self.max_limit)
        return self.default_limit if limit is None else limit

    def get_offset(self, request: Request) -> int:
        offset = self._read(request, self.offset_query_param, minimum=0, maximum=self.max_offset)
        return offset or 0

    def get_schema_operation_parameters(self, view: Any) -> list[dict[str, Any]]:
        limit = {"type": "integer", "minimum": 1, "maximum": self.max_limit, "default": self.default_limit}
        offset = {"type": "integer", "minimum": 0, "maximum": self.max_offset, "default": 0}
        return [
            {
                "name": self.limit_query_param,
                "required": False,
                "in": "query",
                "description": "Number of results per page.",
                "schema": limit,
            },
            {
                "name": self.offset_query_param,
                "required": False,
                "in": "query",
                "description": "Index of the first result.",
                "schema": offset,
            },
        ]
