"""A request path made comparable with patterns: dot segments applied, hostile forms refused."""

from __future__ import annotations

import re
from urllib.parse import unquote

from gateway.routing.errors import PathOutsideRoot

_BAD_ESCAPE_RE = re.compile(r"%(?![0-9A-Fa-f]{2})")


def path_normalise(raw_path: str) -> tuple[str, tuple[str, ...], tuple[str, ...]]:
    """(normalised path, decoded segments, raw segments) of a request path.

    Removes empty and '.' segments, applies '..' (also percent-encoded, '%2e%2e'); going above
    the root, a NUL byte, or an encoded '/' or '\\' that hides a dot segment → PathOutsideRoot.
    An invalid percent-escape ('%zz', a lone '%') and a dot segment carrying a path parameter
    ('..;', '.;x': Tomcat, Jetty and Spring read '/a/..;/b' as '/b') → PathOutsideRoot (400).
    The normalised path keeps the client's percent-encoding and a trailing '/'.
    """
    raw_segments: list[str] = []
    segments: list[str] = []
    trailing = False
    for part in raw_path.split("/"):
        if not part:
            trailing = True
            continue
        if "%" in part:
            if _BAD_ESCAPE_RE.search(part):
                raise PathOutsideRoot("The path has an invalid percent-escape.")
            decoded = unquote(part)
        else:
            decoded = part
        if ";" in decoded and decoded.split(";", 1)[0] in (".", ".."):
            raise PathOutsideRoot("A dot segment with a ';' parameter is not allowed in a path.")
        if decoded == "." or decoded == "..":
            if decoded == "..":
                if not raw_segments:
                    raise PathOutsideRoot("The path goes above the root ('..').")
                raw_segments.pop()
                segments.pop()
            trailing = True
            continue
        if "\x00" in decoded:
            raise PathOutsideRoot("The path contains a NUL byte.")
        if ("/" in decoded or "\\" in decoded) and any(
            piece in (".", "..") for piece in re.split(r"[/\\]", decoded)
        ):
            raise PathOutsideRoot("The path hides a dot segment behind an encoded separator.")
        raw_segments.append(part)
        segments.append(decoded)
        trailing = False
    normalised = "/" + "/".join(raw_segments)
    if trailing and raw_segments:
        normalised += "/"
    return normalised, tuple(segments), tuple(raw_segments)
