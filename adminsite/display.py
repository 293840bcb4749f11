"""Admin display helpers: identifiers shown short (full value on hover), long text truncated."""

from __future__ import annotations

from typing import Any

from django.utils.html import format_html
from django.utils.safestring import SafeString

SHORT_ID_CHARS = 8


def short_id(value: Any) -> SafeString | str:
    """A UUID (or any long id) as its first 8 characters in monospace, the whole one in the title."""
    if value in (None, ""):
        return "–"
    full = str(value)
    if len(full) <= SHORT_ID_CHARS + 2:
        return format_html('<span class="gh-id">{}</span>', full)
    return format_html('<span class="gh-id" title="{}">{}…</span>', full, full[:SHORT_ID_CHARS])


def truncated(value: Any) -> SafeString | str:
    """Monospace text cut by CSS at a fixed width (patterns, URLs, keys), the whole one in the title."""
    if value in (None, ""):
        return "–"
    return format_html('<span class="gh-pattern" title="{}">{}</span>', value, value)
