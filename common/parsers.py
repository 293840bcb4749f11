"""The JSON parser of every API: bad bytes are a 400 problem, never a server error later on."""

from __future__ import annotations

import json
from typing import Any

from rest_framework.exceptions import ParseError
from rest_framework.parsers import JSONParser

# Deeper documents are refused before anything walks them; no request of ours nests beyond 4.
MAX_DEPTH = 32


class StrictJSONParser(JSONParser):
    """UTF-8 JSON with no NUL character, no lone surrogate and at most MAX_DEPTH levels of nesting.

    The standard parser lets these through: `json` decodes `"\\u0000"` and `"\\ud800"` into
    strings PostgreSQL (and any UTF-8 encoder) refuses, and 10 000 nested `[` raise a
    RecursionError. Each is a ParseError (400 malformed-request) here, before a view runs.
    """

    def parse(self, stream: Any, media_type: str | None = None, parser_context: dict | None = None) -> Any:
        raw = stream.read() if stream is not None else b""
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ParseError("The request body is not valid UTF-8.") from exc
        try:
            data = json.loads(text, parse_constant=_refuse_constant)
        except RecursionError as exc:
            raise ParseError(f"JSON nested deeper than {MAX_DEPTH} levels.") from exc
        except ValueError as exc:
            raise ParseError(f"JSON parse error - {exc}") from exc
        _check(data)
        return data


def _refuse_constant(name: str) -> None:
    raise ValueError(f"{name} is not valid JSON")


def _check(data: Any) -> None:
    """Depth, NUL and lone surrogates, walked without recursion."""
    stack: list[tuple[Any, int]] = [(data, 1)]
    while stack:
        value, depth = stack.pop()
        if isinstance(value, str):
            _check_text(value)
        elif isinstance(value, dict | list):
            if depth > MAX_DEPTH:
                raise ParseError(f"JSON nested deeper than {MAX_DEPTH} levels.")
            if isinstance(value, dict):
                for key, item in value.items():
                    _check_text(key)
                    stack.append((item, depth + 1))
            else:
                stack.extend((item, depth + 1) for item in value)


def _check_text(text: str) -> None:
    if "\x00" in text:
        raise ParseError("JSON strings must not contain NUL characters.")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ParseError("JSON strings must not contain lone surrogates.") from exc
