"""Charts drawn server-side as inline SVG: no script, no CDN, readable without JavaScript."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime

from django.utils.html import escape
from django.utils.safestring import SafeString, mark_safe

REQUESTS_COLOUR = "#417690"  # the admin's own blue
ERRORS_COLOUR = "#ba2121"  # the admin's error red
STATUS_COLOURS = {
    "pending_payment": "#e6a700",
    "paid": "#2e7d32",
    "cancelled": "#777777",
    "expired": "#ba2121",
    "running": "#417690",
    "completed": "#2e7d32",
    "compensating": "#e6a700",
    "compensated": "#777777",
    "failed": "#ba2121",
}


def traffic_sparkline(
    per_minute: Sequence[tuple[int, int]], *, last_minute: int, width: int = 300, height: int = 40
) -> SafeString:
    """One bar per minute (requests), its 5xx part in red; each bar's tooltip gives the figures."""
    peak = max((requests for requests, _ in per_minute), default=0) or 1
    slot = width / max(1, len(per_minute))
    bar = max(1.0, slot - 1)
    first = last_minute - len(per_minute) + 1
    parts = [
        f'<svg class="spark" role="img" width="{width}" height="{height}" viewBox="0 0 {width} {height}" '
        f'xmlns="http://www.w3.org/2000/svg" aria-label="requests per minute, last hour">',
        f'<line x1="0" y1="{height - 0.5}" x2="{width}" y2="{height - 0.5}" stroke="#ccc"/>',
    ]
    for offset, (requests, errors) in enumerate(per_minute):
        if not requests:
            continue
        x = offset * slot
        total_height = max(1.0, (height - 2) * requests / peak)
        error_height = (height - 2) * errors / peak if errors else 0.0
        minute = datetime.fromtimestamp((first + offset) * 60, tz=UTC).strftime("%H:%M")
        label = escape(f"{minute} UTC: {requests} requests, {errors} 5xx")
        parts.append(
            f'<g><title>{label}</title><rect x="{x:.1f}" y="{height - 1 - total_height:.1f}" '
            f'width="{bar:.1f}" height="{total_height:.1f}" fill="{REQUESTS_COLOUR}"/>'
        )
        if error_height:
            parts.append(
                f'<rect x="{x:.1f}" y="{height - 1 - error_height:.1f}" width="{bar:.1f}" '
                f'height="{max(1.0, error_height):.1f}" fill="{ERRORS_COLOUR}"/>'
            )
        parts.append("</g>")
    parts.append("</svg>")
    return mark_safe("".join(parts))  # noqa: S308  (every interpolated text is escaped above)


def status_bars(
    rows: Sequence[tuple[str, str, int]], *, width: int = 420, bar_height: int = 22
) -> SafeString:
    """Horizontal bars, one per (value, label, count), scaled to the largest count."""
    label_width, count_width = 130, 70
    scale_width = width - label_width - count_width
    peak = max((count for _, _, count in rows), default=0) or 1
    height = bar_height * len(rows) + 4
    parts = [
        f'<svg class="bars" role="img" width="{width}" height="{height}" viewBox="0 0 {width} {height}" '
        f'xmlns="http://www.w3.org/2000/svg">'
    ]
    for index, (value, label, count) in enumerate(rows):
        y = index * bar_height + 2
        length = scale_width * count / peak if count else 0
        colour = STATUS_COLOURS.get(value, REQUESTS_COLOUR)
        parts.append(
            f"<g><title>{escape(label)}: {count}</title>"
            f'<text x="0" y="{y + bar_height * 0.68:.1f}" font-size="13" fill="currentColor">'
            f"{escape(label)}</text>"
            f'<rect x="{label_width}" y="{y + 3}" width="{max(length, 1 if count else 0):.1f}" '
            f'height="{bar_height - 6}" rx="2" fill="{colour}"/>'
            f'<text x="{label_width + length + 6:.1f}" y="{y + bar_height * 0.68:.1f}" font-size="13" '
            f'fill="currentColor">{count}</text></g>'
        )
    parts.append("</svg>")
    return mark_safe("".join(parts))  # noqa: S308  (labels escaped, numbers formatted)
