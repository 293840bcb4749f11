"""Property tests of the header rules (gateway/services/headers.py), the identity value rule,
correlation id acceptance and the cache rules (gateway/services/cache_rules.py)."""

from __future__ import annotations

import ipaddress
import re
import string

from hypothesis import assume, given
from hypothesis import strategies as st

from common.correlation import accept_correlation_id
from gateway.services.cache_rules import (
    cache_lookup_allowed,
    response_storable,
    vary_digest,
    vary_names,
)
from gateway.services.headers import (
    FORWARDING_HEADERS,
    HOP_BY_HOP,
    IDENTITY_HEADERS,
    forwarded_element,
    identity_value_is_safe,
    response_headers,
    trusted_proxies,
    upstream_request_headers,
)
from gateway.types import Identity
from tests.gateway.fuzz_support import FUZZ

TCHAR = string.ascii_letters + string.digits + "!#$%&'*+-.^_`|~"
SPECIAL_NAMES = [
    "Host",
    "Content-Length",
    "Connection",
    "Keep-Alive",
    "TE",
    "Trailer",
    "Transfer-Encoding",
    "Upgrade",
    "Proxy-Authorization",
    "Proxy",
    "Expect",
    *IDENTITY_HEADERS,
    "X-Correlation-ID",
    "X-Forwarded-For",
    "X-Forwarded-Proto",
    "X-Forwarded-Host",
    "Forwarded",
    "X-Real-IP",
    "Cookie",
    "Authorization",
    "Accept-Encoding",
    "X-Custom",
]
names = st.one_of(
    st.sampled_from(SPECIAL_NAMES).flatmap(lambda n: st.sampled_from([n, n.lower(), n.upper()])),
    st.text(TCHAR, min_size=1, max_size=12),
)
# Field values as a server hands them over: no CR, LF or NUL (RFC 9110 §5.5), any other Latin-1.
values = st.text(
    st.characters(min_codepoint=0x20, max_codepoint=0xFF, exclude_characters="\x7f"), max_size=20
)
pairs = st.lists(st.tuples(names, values), max_size=12)
addresses = st.one_of(st.ip_addresses(v=4), st.ip_addresses(v=6)).map(str)
safe_values = st.text(st.sampled_from(TCHAR + ":/@=[]{}()<>?;"), min_size=1, max_size=12)
identities = st.one_of(
    st.none(),
    st.builds(
        lambda u, t, p: Identity(user_id=u, tenant_id=t, permissions=frozenset(p)),
        safe_values.filter(lambda v: "," not in v),
        safe_values.filter(lambda v: "," not in v),
        st.lists(safe_values.filter(lambda v: "," not in v), max_size=4),
    ),
)


def _all(headers, name):
    return [value for key, value in headers if key.lower() == name.lower()]


@FUZZ
@given(pairs, addresses, st.sampled_from(["http", "https"]), values, identities, st.booleans())
def test_upstream_headers_never_carry_a_clients_claims(client, peer, scheme, host, identity, trust):
    trusted = trusted_proxies(spec=[peer]) if trust else trusted_proxies(spec=[])

    out = upstream_request_headers(
        client_headers=client,
        peer=peer,
        scheme=scheme,
        host=host,
        identity=identity,
        correlation_id="c-1",
        target_host="up:80",
        trusted=trusted,
    )

    named = {token.strip().lower() for n, v in client if n.lower() == "connection" for token in v.split(",")}
    lowered = [name.lower() for name, _ in out]
    assert out[0] == ("Host", "up:80") and lowered.count("host") == 1
    for gateway_set in (*FORWARDING_HEADERS, "x-correlation-id"):
        assert lowered.count(gateway_set) == 1, gateway_set
    assert _all(out, "X-Correlation-ID") == ["c-1"]
    for name in lowered:
        assert name not in HOP_BY_HOP and not name.startswith("proxy") and name != "expect"
        assert name not in named or name in FORWARDING_HEADERS or name in ("host", "x-correlation-id")
    for header in IDENTITY_HEADERS:
        assert len(_all(out, header)) == (0 if identity is None else 1)
    if identity is not None:
        assert _all(out, "X-User-ID") == [identity.user_id]
        assert set(filter(None, _all(out, "X-User-Permissions")[0].split(","))) == identity.permissions
    if not trust:
        assert _all(out, "X-Forwarded-For") == [peer] and _all(out, "X-Real-IP") == [peer]
        assert _all(out, "X-Forwarded-Host") == [host] and _all(out, "X-Forwarded-Proto") == [scheme]
    else:
        assert _all(out, "X-Forwarded-For")[0].endswith(peer)
    # every end-to-end client header that is not replaced passes through, in order
    passed = [
        (n, v)
        for n, v in client
        if n.lower() not in named
        and n.lower() not in {*HOP_BY_HOP, *FORWARDING_HEADERS, "host", "content-length", "expect", "proxy"}
        and n.lower() not in {"x-correlation-id", *(h.lower() for h in IDENTITY_HEADERS)}
        and not n.lower().startswith("proxy-")
    ]
    assert [p for p in out if p in passed] == passed
    # bytes pairs (ASGI) give the same answer as str pairs (WSGI)
    as_bytes = [(n.encode("latin-1"), v.encode("latin-1")) for n, v in client]
    kwargs = {"peer": peer, "scheme": scheme, "host": host, "identity": identity, "correlation_id": "c-1"}
    assert (
        upstream_request_headers(client_headers=as_bytes, target_host="up:80", trusted=trusted, **kwargs)
        == out
    )


@FUZZ
@given(pairs)
def test_response_headers_keep_only_end_to_end_ones_in_order(upstream):
    named = {
        token.strip().lower() for n, v in upstream if n.lower() == "connection" for token in v.split(",")
    }
    kept = response_headers(upstream_headers=upstream)
    assert kept == [
        (n, v)
        for n, v in upstream
        if n.lower() not in HOP_BY_HOP and not n.lower().startswith("proxy-") and n.lower() not in named
    ]


def _parse_forwarded_element(element: str) -> dict[str, str]:
    """A strict RFC 7239 element parser (token or quoted-string values)."""
    result, rest = {}, element
    pattern = re.compile(r'([A-Za-z]+)=(?:"((?:[^"\\]|\\.)*)"|([!#$%&\'*+\-.^_`|~0-9A-Za-z]+))(;|$)')
    while rest:
        match = pattern.match(rest)
        assert match, (element, rest)
        quoted, token = match.group(2), match.group(3)
        result[match.group(1)] = token if token is not None else re.sub(r"\\(.)", r"\1", quoted)
        rest = rest[match.end() :]
    return result


@FUZZ
@given(addresses, values, st.sampled_from(["http", "https"]))
def test_the_forwarded_element_parses_back_to_what_the_gateway_saw(peer, host, scheme):
    parsed = _parse_forwarded_element(forwarded_element(peer=peer, host=host, scheme=scheme))
    ip = ipaddress.ip_address(peer)
    assert parsed["for"] == (f"[{ip}]" if ip.version == 6 else str(ip))
    assert parsed.get("host", "") == host and parsed["proto"] == scheme


@FUZZ
@given(st.text(max_size=40))
def test_a_safe_identity_value_is_one_visible_ascii_list_element(value):
    if identity_value_is_safe(value=value):
        assert value.encode("ascii").decode("latin-1") == value
        assert value == value.strip() and "," not in value and value.isprintable()
        assert 1 <= len(value) <= 256
    else:
        assert not value or len(value) > 256 or any(c in ',"\\' or not ("!" <= c <= "~") for c in value)


@FUZZ
@given(st.lists(safe_values.filter(lambda v: identity_value_is_safe(value=v)), max_size=6))
def test_safe_permissions_survive_the_comma_list(permissions):
    header = ",".join(sorted(set(permissions)))
    assert set(filter(None, header.split(","))) == set(permissions)


@FUZZ
@given(st.one_of(st.none(), st.text(max_size=200), st.from_regex(r"\A[A-Za-z0-9._:\-]{1,128}\Z")))
def test_correlation_ids_are_kept_only_when_sane(value):
    accepted = accept_correlation_id(value)
    if value and re.fullmatch(r"[A-Za-z0-9._:\-]{1,128}", value):
        assert accepted == value
    else:
        assert re.fullmatch(r"[0-9a-f]{32}", accepted)
    assert identity_value_is_safe(value=accepted)  # travels as a header value as it is


# --- cache rules ---------------------------------------------------------------------------------

cache_names = st.sampled_from(
    ["Cookie", "Authorization", "Cache-Control", "Pragma", "Accept-Encoding", "Accept-Language", "X-A"]
)
cache_pairs = st.lists(st.tuples(cache_names, st.sampled_from(["", "x", "gzip", "no-store", "no-cache"])))
response_pairs = st.lists(
    st.tuples(
        st.sampled_from(["Cache-Control", "Set-Cookie", "Vary", "Content-Encoding", "Content-Type"]),
        st.sampled_from(
            [
                "public",
                "private",
                "no-store",
                "s-maxage=60",
                "max-age=60",
                "*",
                "Accept-Encoding",
                "gzip",
                "x",
            ]
        ),
    ),
    max_size=5,
)


@FUZZ
@given(cache_pairs, response_pairs, st.booleans())
def test_credentials_never_end_up_shared(request, response, shared):
    storable = response_storable(
        request_headers=request,
        shared=shared,
        status=200,
        response_headers=response,
        body_size=10,
        max_bytes=100,
    )
    folded = {}
    for name, value in request:
        folded.setdefault(name.lower(), []).append(value)
    cookie = any(v.strip() for v in folded.get("cookie", []))
    authorization = any(v.strip() for v in folded.get("authorization", []))
    directives = {v for n, v in response if n == "Cache-Control"}
    if cookie:
        assert not storable and not cache_lookup_allowed(request_headers=request, shared=shared)
    if shared and authorization:
        assert not cache_lookup_allowed(request_headers=request, shared=shared)
        if storable:
            assert directives & {"public", "s-maxage=60"}
    if storable:
        assert not directives & {"private", "no-store"}
        assert "Set-Cookie" not in {n for n, _ in response}
        assert vary_names(response_headers=response) is not None


@FUZZ
@given(cache_pairs, cache_pairs, response_pairs)
def test_the_vary_key_separates_exactly_the_varied_values(first, second, response):
    names = vary_names(response_headers=response)
    assume(names is not None)

    def values(request):
        folded = {}
        for name, value in request:
            folded[name.lower()] = f"{folded[name.lower()]}, {value}" if name.lower() in folded else value
        for credential in ("cookie", "authorization"):
            if credential in folded and not folded[credential].strip(" \t,"):
                del folded[credential]
        return [folded.get(name) for name in names]

    same = values(first) == values(second)
    assert (
        vary_digest(request_headers=first, names=names) == vary_digest(request_headers=second, names=names)
    ) == same
    if any(v == "gzip" for n, v in response if n == "Content-Encoding"):
        assert "accept-encoding" in names
