"""Property tests of the gateway's path normalisation (routing's `path_normalise`, read only here).

Paths are built from segments an attacker would try (dot segments, their encodings, `;`
parameters, encoded separators, NUL, backslashes, broken percent-escapes) mixed with random text.
"""

from __future__ import annotations

from urllib.parse import unquote

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from common.errors import ApplicationError
from gateway.routing import PathOutsideRoot, path_normalise
from tests.gateway.fuzz_support import FUZZ

TRICKY = [
    ".",
    "..",
    "%2e",
    "%2E",
    ".%2e",
    "%2e%2E",
    "..;",
    ".;",
    "..;x=1",
    "%2e%2e;",
    "..%3b",
    "a;b",
    "%2f",
    "%2F",
    "%5c",
    "..%2f",
    "%2e%2e%2f",
    "a%2f..",
    "\\..",
    "..\\",
    "%00",
    "a%00b",
    "%",
    "%2",
    "%zz",
    "%c0%ae",
    "%c0%ae%c0%ae",
    "%252e%252e",
    "%u002e",
    "~",
    "",
    "a",
    "users",
    "1",
]
segment = st.one_of(st.sampled_from(TRICKY), st.text(max_size=6))
paths = st.lists(segment, max_size=8).map(lambda parts: "/" + "/".join(parts))


def _dot(decoded: str) -> bool:
    return decoded in (".", "..")


@FUZZ
@given(paths)
def test_normalise_refuses_or_gives_a_clean_fixed_point(raw):
    try:
        normalised, segments, raw_segments = path_normalise(raw)
    except PathOutsideRoot:
        return  # a 400 problem for the client: the only failure allowed
    assert normalised.startswith("/")
    assert len(segments) == len(raw_segments)
    assert normalised.rstrip("/") == "/" + "/".join(raw_segments) or normalised == "/"
    for decoded, encoded in zip(segments, raw_segments, strict=True):
        assert encoded and not _dot(decoded) and "\x00" not in decoded
        assert decoded == (unquote(encoded) if "%" in encoded else encoded)
    # normalising twice changes nothing (what is matched is what is forwarded)
    assert path_normalise(normalised) == (normalised, segments, raw_segments)


@FUZZ
@given(st.lists(st.sampled_from(["a", "b", "..", ".", "%2e%2e", "%2E"]), max_size=10))
def test_dot_segments_resolve_like_rfc_3986_or_refuse(parts):
    expected: list[str] = []
    escapes = False
    for part in parts:
        decoded = unquote(part)
        if decoded == "..":
            if not expected:
                escapes = True
                break
            expected.pop()
        elif decoded != ".":
            expected.append(part)
    raw = "/" + "/".join(parts)
    if escapes:
        with pytest.raises(PathOutsideRoot):
            path_normalise(raw)
        return
    normalised, _, raw_segments = path_normalise(raw)
    assert list(raw_segments) == expected


@FUZZ
@given(st.sampled_from(["..;", "..;x=1", "%2e%2e;", ".;", "%2e;jsessionid=1", "..%3b"]))
@example("..;")
def test_dot_segments_with_path_parameters_are_refused(dot_with_params):
    with pytest.raises(ApplicationError) as refused:  # PathOutsideRoot or any other 400
        path_normalise(f"/public/{dot_with_params}/secure/x")
    assert refused.value.status == 400


@FUZZ
@given(st.sampled_from(["%zz", "%", "%2", "a%g1", "%%41"]))
def test_broken_percent_escapes_are_refused(broken):
    with pytest.raises(ApplicationError) as refused:
        path_normalise(f"/public/{broken}")
    assert refused.value.status == 400
