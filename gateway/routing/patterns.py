"""Route path patterns (SPEC §3 "Patterns"): `/users/{id}`, `*` (one segment), `**` (the rest)."""

from __future__ import annotations

import re
from dataclasses import dataclass

LITERAL, PARAM, STAR = 0, 1, 2
_PARAM_RE = re.compile(r"^\{([A-Za-z_][A-Za-z0-9_]*)\}$")
# RFC 3986 pchar without '%' (literals are compared with decoded request segments) and '*'.
_LITERAL_RE = re.compile(r"^[A-Za-z0-9\-._~!$&'()+,;=:@]+$")
_PLACEHOLDER_RE = re.compile(r"\{([^{}]*)\}")


class PatternError(ValueError):
    pass


@dataclass(frozen=True, slots=True)
class RoutePattern:
    source: str
    segments: tuple[tuple[int, str], ...]  # (kind, literal text or parameter name); `**` excluded
    rest: bool  # ends with `**`

    @property
    def literal_count(self) -> int:
        return sum(1 for kind, _ in self.segments if kind == LITERAL)

    @property
    def param_names(self) -> tuple[str, ...]:
        return tuple(value for kind, value in self.segments if kind == PARAM)

    @property
    def is_literal(self) -> bool:
        return not self.rest and all(kind == LITERAL for kind, _ in self.segments)


def pattern_parse(source: str) -> RoutePattern:
    """Parse a route path pattern; raises PatternError saying what is wrong."""
    if not isinstance(source, str) or not source.startswith("/"):
        raise PatternError("A path pattern starts with '/'.")
    if source == "/":
        return RoutePattern(source, (), False)
    parts = source[1:].split("/")
    segments: list[tuple[int, str]] = []
    rest = False
    seen: set[str] = set()
    for index, part in enumerate(parts):
        if part == "":
            raise PatternError("Empty segment ('//' or a trailing '/') in the pattern.")
        if part == "**":
            if index != len(parts) - 1:
                raise PatternError("'**' may only be the last segment.")
            rest = True
        elif part == "*":
            segments.append((STAR, "*"))
        elif match := _PARAM_RE.match(part):
            name = match.group(1)
            if name in seen:
                raise PatternError(f"Parameter '{{{name}}}' appears twice.")
            seen.add(name)
            segments.append((PARAM, name))
        elif part in (".", ".."):
            raise PatternError("'.' and '..' are not allowed in a pattern.")
        elif "{" in part or "}" in part or "*" in part:
            raise PatternError(
                f"Segment '{part}': a parameter must be a whole segment '{{name}}', "
                "and '*' / '**' must stand alone."
            )
        elif not _LITERAL_RE.match(part):
            raise PatternError(f"Segment '{part}' has characters not allowed in a path (write it decoded).")
        else:
            segments.append((LITERAL, part))
    return RoutePattern(source, tuple(segments), rest)
