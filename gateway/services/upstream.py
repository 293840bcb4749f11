"""Forwarding a matched request to its service on the event loop: aiohttp, one time budget, safe retries.

The asynchronous counterpart of `gateway.services.proxy` (same errors, retry rules, circuit
breaker and metrics, from `gateway.services.upstream_errors` and `gateway.services.circuit`):

- one `ClientSession` (keep-alive pool of GATEWAY_UPSTREAM_POOL_SIZE connections) per target
  origin and per event loop, created on first use: no cookie jar, no decompression, no headers
  the caller did not give (but Host and the body's framing), no redirects followed;
- the path and query string are sent byte for byte (`yarl.URL(..., encoded=True)`);
- `route.timeout_ms` bounds connect + response head + a buffered body over every attempt;
- a cancelled caller (the client went away) closes the upstream connection at once and frees
  the circuit's half-open probe; a half-read connection never goes back to the pool.

Nothing here touches the database or Redis, and nothing blocks the loop.
"""

from __future__ import annotations

import asyncio
import logging
import time
import weakref
from collections.abc import AsyncIterator
from dataclasses import dataclass
from functools import lru_cache
from urllib.parse import urlsplit

import aiohttp
from django.conf import settings
from yarl import URL

from common import telemetry
from common.errors import ApplicationError
from gateway import metrics
from gateway.services import headers as header_rules
from gateway.services.circuit import (
    circuit_record_failure,
    circuit_record_success,
    circuit_release_probe,
    circuit_retry_after,
)
from gateway.services.upstream_errors import (
    BUFFER_LIMIT_BYTES,
    MIN_ATTEMPT_SECONDS,
    RETRYABLE_METHODS,
    RETRYABLE_STATUSES,
    STREAM_CHUNK_BYTES,
    BadGateway,
    CircuitOpen,
    GatewayTimeout,
    backoff_delay,
    next_start,
    pick_target,
)
from gateway.types import ResolvedRoute

__all__ = [
    "BadGateway",
    "CircuitOpen",
    "GatewayTimeout",
    "UpstreamAnswer",
    "upstream_close",
    "upstream_forward",
]

logger = logging.getLogger("gatehouse.proxy")

# Headers aiohttp would add on its own; the upstream sees only what the client (via headers.py) sent.
_SKIP_AUTO_HEADERS = ("User-Agent", "Accept", "Accept-Encoding", "Content-Type")
# Framing is the client's own business: set here from the body actually sent.
_FRAMING = frozenset({"content-length", "transfer-encoding"})
_NO_TIMEOUT = aiohttp.ClientTimeout(total=None, connect=None, sock_read=None, sock_connect=None)


@dataclass(frozen=True, slots=True)
class _Target:
    base: str  # as configured: the circuit and metrics key
    origin: str  # scheme://host:port, the pool key
    host: str  # Host header value
    path_prefix: str  # a target like http://h/api puts /api before the upstream path


@lru_cache(maxsize=4096)
def _target(base: str) -> _Target:
    parts = urlsplit(base)
    return _Target(
        base=base,
        origin=f"{parts.scheme}://{parts.netloc}",
        host=parts.netloc,
        path_prefix=parts.path.rstrip("/"),
    )


# --- Pools: one session per (event loop, target origin) ----------------------------------------
# A uvicorn worker is its own process with one loop; tests may run several loops one after the
# other. Sessions are bound to the loop that made them, so they are looked up by loop.
_sessions: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[str, aiohttp.ClientSession]] = (
    weakref.WeakKeyDictionary()
)


def _session(origin: str) -> aiohttp.ClientSession:
    loop = asyncio.get_running_loop()
    per_loop = _sessions.get(loop)
    if per_loop is None:
        per_loop = _sessions[loop] = {}
    session = per_loop.get(origin)
    if session is None or session.closed:
        connector = aiohttp.TCPConnector(
            limit=0,  # the bound is per target (limit_per_host), not per process
            limit_per_host=settings.GATEWAY_UPSTREAM_POOL_SIZE,
            keepalive_timeout=settings.GATEWAY_UPSTREAM_KEEPALIVE_SECONDS,
            ttl_dns_cache=10,
        )
        session = aiohttp.ClientSession(
            connector=connector,
            cookie_jar=aiohttp.DummyCookieJar(),
            auto_decompress=False,
            skip_auto_headers=_SKIP_AUTO_HEADERS,
            timeout=_NO_TIMEOUT,  # the request's budget is ours (asyncio.timeout_at)
            trust_env=False,
            requote_redirect_url=False,
            read_bufsize=STREAM_CHUNK_BYTES,
        )
        per_loop[origin] = session
    return session


async def upstream_close() -> None:
    """Close every pooled session of the running loop (lifespan shutdown)."""
    loop = asyncio.get_running_loop()
    per_loop = _sessions.pop(loop, {})
    for session in per_loop.values():
        await session.close()


# --- The answer --------------------------------------------------------------------------------


class UpstreamAnswer:
    """A proxied response: status, headers in upstream order, and either a body or a stream.

    `release()` gives the connection back (or closes it when the body was not read to its end);
    it may be called any number of times, also after a cancelled read.
    """

    __slots__ = ("status", "reason", "headers", "body", "stream", "_response", "_done")

    def __init__(
        self,
        *,
        status: int,
        reason: str,
        headers: list[tuple[str, str]],
        body: bytes | None = None,
        response: aiohttp.ClientResponse | None = None,
        read_timeout: float | None = None,
    ) -> None:
        self.status = status
        self.reason = reason
        self.headers = headers
        self.body = body
        self._response = response
        self._done = response is None
        self.stream: AsyncIterator[bytes] | None = (
            None if response is None else self._chunks(response, read_timeout)
        )

    async def _chunks(
        self, response: aiohttp.ClientResponse, read_timeout: float | None
    ) -> AsyncIterator[bytes]:
        """The body in chunks of at most STREAM_CHUNK_BYTES as they arrive.

        aiohttp pauses reading the socket while its buffer is full, so a slow consumer slows the
        upstream down instead of filling memory. Each read may wait `read_timeout` (what the
        attempt had left when the head arrived, as the sync client does).
        """
        try:
            while True:
                try:
                    async with asyncio.timeout(read_timeout):
                        chunk = await response.content.read(STREAM_CHUNK_BYTES)
                except TimeoutError:
                    raise GatewayTimeout("The service stopped sending its response.") from None
                except (aiohttp.ClientError, OSError) as exc:
                    raise BadGateway("The service closed the connection mid-response.") from exc
                if not chunk:
                    break
                yield chunk
        except BaseException:
            self._close()
            raise
        self._done = True
        response.release()

    def _close(self) -> None:
        if self._response is not None:
            self._response.close()  # half-read: the connection cannot be reused
            self._response = None

    async def release(self) -> None:
        response = self._response
        if response is None:
            return
        self._response = None
        if self._done:
            response.release()
        else:
            response.close()


# --- Forwarding --------------------------------------------------------------------------------


class _OnceBody:
    """A streamed request body; remembers whether it was touched (then it cannot be replayed)."""

    __slots__ = ("_source", "started")

    def __init__(self, source: AsyncIterator[bytes]) -> None:
        self._source = source
        self.started = False

    async def chunks(self) -> AsyncIterator[bytes]:
        self.started = True
        async for chunk in self._source:
            if chunk:
                yield chunk


def _upstream_headers(
    headers: list[tuple[str, str]], host: str, *, keep_length: bool
) -> list[tuple[str, str]]:
    """The caller's headers with Host filled in for this target when left empty or absent."""
    out: list[tuple[str, str]] = []
    have_host = False
    for name, value in headers:
        lower = name.lower()
        if lower == "host":
            if have_host:
                continue
            have_host = True
            out.append((name, value or host))
        elif lower in _FRAMING and not (keep_length and lower == "content-length"):
            continue
        else:
            out.append((name, value))
    if not have_host:
        out.insert(0, ("Host", host))
    return out


def _failure(target: str, service: str) -> None:
    if circuit_record_failure(target=target):
        logger.warning("circuit opened for %s (service %s)", target, service)
        metrics.circuit_opened.labels(service).inc()


async def _attempt(
    *,
    target: _Target,
    method: str,
    url_tail: str,
    headers: list[tuple[str, str]],
    data: bytes | AsyncIterator[bytes] | None,
    read_timeout: float,
) -> UpstreamAnswer:
    """One request to one target; a response is closed on any failure or cancellation."""
    url = URL(target.origin + target.path_prefix + url_tail, encoded=True)
    response = await _session(target.origin).request(
        method,
        url,
        headers=headers,
        data=data,
        allow_redirects=False,
        compress=None,
        proxy=None,
    )
    try:
        answer_headers = header_rules.response_headers(upstream_headers=response.raw_headers)
        length = response.headers.get("Content-Length")
        small = length is not None and length.isdigit() and int(length) <= BUFFER_LIMIT_BYTES
        if method == "HEAD" or response.status in (204, 304) or small:
            body = await response.read()
            response.release()
            return UpstreamAnswer(
                status=response.status, reason=response.reason or "", headers=answer_headers, body=body
            )
        return UpstreamAnswer(
            status=response.status,
            reason=response.reason or "",
            headers=answer_headers,
            response=response,
            read_timeout=read_timeout,
        )
    except BaseException:
        response.close()
        raise


async def upstream_forward(
    *,
    route: ResolvedRoute,
    method: str,
    path: str,
    query_string: bytes | str,
    headers: list[tuple[str, str]],
    body: bytes | AsyncIterator[bytes],
    idempotency_key: bool = False,
) -> UpstreamAnswer:
    """Send the request to one of the route's targets within `route.timeout_ms`, retrying safely.

    `path` is the upstream path (already rewritten, percent-encoded as received), `query_string`
    the raw one: both are sent unchanged. `headers` come from `gateway.services.headers` with an
    empty Host (set here per target). A body given as an async iterator is streamed (chunked
    unless `headers` carry its Content-Length) and, once started, never replayed.
    Raises BadGateway (502), CircuitOpen (503) or GatewayTimeout (504).
    """
    targets = route.targets
    if not targets:
        raise CircuitOpen("The service has no enabled target.", headers={"Retry-After": "5"})
    loop = asyncio.get_running_loop()
    deadline = loop.time() + route.timeout_ms / 1000
    retry_after_send = method in RETRYABLE_METHODS or idempotency_key
    if isinstance(query_string, bytes):
        query_string = query_string.decode("latin-1")
    url_tail = f"{path}?{query_string}" if query_string else path
    streamed = None if isinstance(body, bytes | bytearray) else _OnceBody(body)
    service = route.service
    start = next_start(targets)
    attempt = 0
    while True:
        target_url = pick_target(targets, start + attempt)
        if target_url is None:
            retry_after = min(circuit_retry_after(target=t) for t in targets)
            raise CircuitOpen(
                f"Every target of {service} is failing; retry later.",
                headers={"Retry-After": str(retry_after)},
            )
        target = _target(target_url)
        remaining = deadline - loop.time()
        if remaining <= 0:
            circuit_release_probe(target=target_url)
            raise GatewayTimeout(f"{service} did not answer within {route.timeout_ms} ms.")
        if streamed is None:
            data: bytes | AsyncIterator[bytes] | None = bytes(body) if body else None  # type: ignore[arg-type]
        else:
            data = streamed.chunks()
        send_headers = _upstream_headers(headers, target.host, keep_length=streamed is not None)
        started = time.perf_counter()
        outcome = "error"
        try:
            # One deadline for connect, head and a buffered body, whatever attempt this is.
            with telemetry.span(
                "gateway.upstream",
                kind="client",
                attributes={"server.address": target.host, "gateway.attempt": attempt},
            ) as span:
                async with asyncio.timeout_at(deadline):
                    answer = await _attempt(
                        target=target,
                        method=method,
                        url_tail=url_tail,
                        # the upstream's parent is this attempt's span (when telemetry is on)
                        headers=telemetry.inject_pairs(send_headers),
                        data=data,
                        read_timeout=remaining,
                    )
                span.set_status_code(answer.status)
            outcome = str(answer.status)
        except aiohttp.ClientConnectorError as exc:
            # Refused / unreachable before one byte went out: safe to retry for every method.
            _failure(target_url, service)
            last_error: ApplicationError = BadGateway(f"Could not connect to {service}.")
            retryable = streamed is None or not streamed.started
            outcome = "connect_error"
            logger.info("upstream %s refused the connection: %s", target_url, exc)
        except TimeoutError:
            _failure(target_url, service)
            outcome = "timeout"
            raise GatewayTimeout(f"{service} did not answer within {route.timeout_ms} ms.") from None
        except (aiohttp.ClientError, OSError) as exc:
            # Reset, closed mid-answer, unparsable status line: the request may have been acted on.
            _failure(target_url, service)
            last_error = BadGateway(f"{service} closed the connection or sent an invalid response.")
            retryable = retry_after_send and streamed is None
            logger.info("upstream %s failed: %r", target_url, exc)
        except BaseException:
            circuit_release_probe(target=target_url)  # cancelled: a half-open slot must not stay taken
            raise
        else:
            if answer.status not in RETRYABLE_STATUSES:
                circuit_record_success(target=target_url)
                return answer
            _failure(target_url, service)
            if not retry_after_send or streamed is not None or attempt >= route.retry_count:
                return answer
            try:
                if not await _backoff(attempt, deadline):
                    return answer
            except BaseException:
                await answer.release()
                raise
            await answer.release()
            attempt += 1
            metrics.upstream_retries.labels(service).inc()
            continue
        finally:
            metrics.upstream_latency.labels(service, outcome).observe(time.perf_counter() - started)
        if not retryable or attempt >= route.retry_count or not await _backoff(attempt, deadline):
            raise last_error
        attempt += 1
        metrics.upstream_retries.labels(service).inc()


async def _backoff(attempt: int, deadline: float) -> bool:
    """Sleep a full-jitter backoff before the next attempt; False when the budget cannot afford it."""
    delay = backoff_delay(attempt)
    if asyncio.get_running_loop().time() + delay + MIN_ATTEMPT_SECONDS >= deadline:
        return False
    await asyncio.sleep(delay)
    return True
