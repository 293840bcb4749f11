"""Serializer fields that take JSON types as they are: no string→int, int→UUID or number→string coercion.

DRF's fields coerce (`IntegerField` accepts "2" and 2.0, `UUIDField` turns 5 into a UUID,
`CharField` turns 5 into "5"), so a client's type error passes unnoticed. These refuse it.
"""

from __future__ import annotations

from typing import Any

from django.core.validators import RegexValidator
from rest_framework import serializers

# At least one character that is not JSON whitespace (space, tab, CR, LF; `\\s` differs between
# regex engines), and no NUL (published as the schema's
# `pattern`; written so that no two parts can match the same character, hence no backtracking).
_NOT_BLANK = RegexValidator(
    r"^[ \t\n\r]*[^ \t\n\r\x00][^\x00]*\Z",
    message="Must contain a non-space character and no NUL.",
    code="blank",
)


class StrictCharField(serializers.CharField):
    """A JSON string only, taken as sent (not trimmed, so maxLength means what it says), with at
    least one non-space character. NUL and lone surrogates are refused by DRF's validators."""

    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault("trim_whitespace", False)
        kwargs.setdefault("min_length", 1)
        super().__init__(**kwargs)
        self.validators.append(_NOT_BLANK)

    def to_internal_value(self, data: Any) -> str:
        if not isinstance(data, str):
            self.fail("invalid")
        return super().to_internal_value(data)


class StrictRegexField(serializers.RegexField):
    """A JSON string matching the regex as sent (not trimmed first)."""

    def __init__(self, regex: str, **kwargs: Any) -> None:
        kwargs.setdefault("trim_whitespace", False)
        super().__init__(regex, **kwargs)

    def to_internal_value(self, data: Any) -> str:
        if not isinstance(data, str):
            raise serializers.ValidationError("Not a valid string.", code="invalid")
        return super().to_internal_value(data)


class StrictIntegerField(serializers.IntegerField):
    """A JSON integer only: "2", 2.0 and true are refused."""

    def to_internal_value(self, data: Any) -> int:
        if isinstance(data, bool) or not isinstance(data, int):
            self.fail("invalid")
        return super().to_internal_value(data)


class StrictStringField(serializers.CharField):
    """A JSON string only, taken as sent (not trimmed); blank allowed unless `allow_blank=False`."""

    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault("trim_whitespace", False)
        super().__init__(**kwargs)

    def to_internal_value(self, data: Any) -> str:
        if not isinstance(data, str):
            self.fail("invalid")
        return super().to_internal_value(data)


class StrictBooleanField(serializers.BooleanField):
    """A JSON `true` / `false` only: "true", 1 and "yes" are refused."""

    def to_internal_value(self, data: Any) -> bool:
        if not isinstance(data, bool):
            self.fail("invalid", input=data)
        return data


class StrictUUIDField(serializers.UUIDField):
    """A UUID string only (DRF's UUIDField turns the integer 5 into a UUID)."""

    def to_internal_value(self, data: Any) -> Any:
        if not isinstance(data, str):
            self.fail("invalid", value=data)
        return super().to_internal_value(data)
