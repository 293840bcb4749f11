"""Property tests of `Idempotency-Key` parsing (idempotency/services.py::idempotency_key_parse)."""

from __future__ import annotations

import string

from hypothesis import given
from hypothesis import strategies as st

from idempotency.errors import IdempotencyKeyInvalid
from idempotency.services import MAX_KEY_LENGTH, idempotency_key_parse
from tests.gateway.fuzz_support import FUZZ

PRINTABLE = "".join(chr(c) for c in range(0x20, 0x7F))
keys = st.text(PRINTABLE, min_size=1, max_size=MAX_KEY_LENGTH)
# Header values as a server hands them over (Latin-1 text, no CR/LF/NUL), and near misses.
header_values = st.one_of(
    st.text(st.characters(min_codepoint=0x01, max_codepoint=0xFF, exclude_characters="\r\n"), max_size=300),
    keys.map(lambda k: f'"{k}"'),
    keys.map(lambda k: f" \t{k}\t "),
    st.text(string.ascii_letters + '"\\ ', max_size=12),
)


def _sf_string(key: str) -> str:
    return '"' + key.replace("\\", "\\\\").replace('"', '\\"') + '"'


@FUZZ
@given(header_values)
def test_a_header_gives_a_printable_key_or_a_400(value):
    try:
        key = idempotency_key_parse(header=value)
    except IdempotencyKeyInvalid as exc:
        assert exc.status == 400
        return
    assert key is not None and 1 <= len(key) <= MAX_KEY_LENGTH
    assert all(" " <= char <= "~" for char in key)


@FUZZ
@given(keys)
def test_a_quoted_key_means_the_same_key_as_sent_bare(key):
    assert idempotency_key_parse(header=_sf_string(key)) == key
    if key == key.strip(" \t") and not key.startswith('"'):
        assert idempotency_key_parse(header=key) == key


@FUZZ
@given(st.text(PRINTABLE, min_size=MAX_KEY_LENGTH + 1, max_size=MAX_KEY_LENGTH + 40))
def test_a_key_above_the_limit_is_refused_quoted_or_not(key):
    for header in (key.strip() or "x" * (MAX_KEY_LENGTH + 1), _sf_string(key)):
        try:
            parsed = idempotency_key_parse(header=header)
        except IdempotencyKeyInvalid:
            continue
        assert len(parsed) <= MAX_KEY_LENGTH, header


def test_absent_is_none():
    assert idempotency_key_parse(header=None) is None
