"""Forwarding a matched request to its service on the event loop: one time budget, safe retries.

The asynchronous counterpart of `gateway.services.proxy` (same errors, retry rules, circuit
breaker and metrics, from `gateway.services.upstream_errors` and `gateway.services.circuit`),
on the gateway's own HTTP/1.1 client (`gateway.upstream_client`, asyncio Protocol + httptools):

- one keep-alive pool (GATEWAY_UPSTREAM_POOL_SIZE connections, idle ones closed after
  GATEWAY_UPSTREAM_KEEPALIVE_SECONDS) per target origin and per event loop, created on first
  use: no cookies, no decompression, no headers the caller did not give (but Host and the
  body's framing), no redirects followed;
- the path and query string are sent byte for byte;
- `route.timeout_ms` bounds connect + response head + a buffered body over every attempt;
- a kept-alive connection the service closed just as the request went out on it is retried at
  once on a new connection when the request may be repeated (RFC 9112 §9.3.1);
- a cancelled caller (the client went away) closes the upstream connection at once and frees
  the circuit's half-open probe; a half-read connection never goes back to the pool.

Nothing here touches the database or Redis, and nothing blocks the loop.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from functools import lru_cache
from urllib.parse import urlsplit

from django.conf import settings

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
from gateway.upstream_client import (
    Pool,
    UpstreamConnectError,
    UpstreamError,
    UpstreamResponse,
    UpstreamStaleConnection,
    close_pools,
    pool_for,
)

__all__ = [
    "BadGateway",
    "CircuitOpen",
    "GatewayTimeout",
    "UpstreamAnswer",
    "upstream_close",
    "upstream_forward",
]

logger = logging.getLogger("gatehouse.proxy")

# Framing is the client's own business: set there from the body actually sent.
_FRAMING = frozenset({"content-length", "transfer-encoding"})


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


def _pool(origin: str) -> Pool:
    return pool_for(
        origin,
        size=settings.GATEWAY_UPSTREAM_POOL_SIZE,
        keepalive=settings.GATEWAY_UPSTREAM_KEEPALIVE_SECONDS,
    )


async def upstream_close() -> None:
    """Close every pool of the running loop (lifespan shutdown)."""
    close_pools()


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
        response: UpstreamResponse | None = None,
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

    async def _chunks(self, response: UpstreamResponse, read_timeout: float | None) -> AsyncIterator[bytes]:
        """The body in chunks of at most STREAM_CHUNK_BYTES as they arrive.

        The client pauses reading the socket while its buffer is full, so a slow consumer slows the
        upstream down instead of filling memory. Each read may wait `read_timeout` (what the
        attempt had left when the head arrived, as the sync client does).
        """
        try:
            while True:
                try:
                    async with asyncio.timeout(read_timeout):
                        chunk = await response.read(STREAM_CHUNK_BYTES)
                except TimeoutError:
                    raise GatewayTimeout("The service stopped sending its response.") from None
                except (UpstreamError, OSError) as exc:
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
    resend_stale: bool,
) -> UpstreamAnswer:
    """One request to one target; a response is closed on any failure or cancellation.

    A pooled connection found closed by the service before one byte of the answer is tried once
    more on a new connection when `resend_stale` (the request may be repeated and its body is
    bytes): the service most likely closed it idle, not because of this request.
    """
    pool = _pool(target.origin)
    request_target = target.path_prefix + url_tail
    try:
        response = await pool.request(method, request_target, headers, data)
    except UpstreamStaleConnection:
        if not resend_stale:
            raise
        response = await pool.request(method, request_target, headers, data, fresh=True)
    try:
        answer_headers = header_rules.response_headers(upstream_headers=response.headers)
        length = response.header(b"content-length")
        small = length is not None and length.isdigit() and int(length) <= BUFFER_LIMIT_BYTES
        if method == "HEAD" or response.status in (204, 304) or small:
            body = await response.read()
            response.release()
            return UpstreamAnswer(
                status=response.status, reason=response.reason, headers=answer_headers, body=body
            )
        return UpstreamAnswer(
            status=response.status,
            reason=response.reason,
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
                        resend_stale=retry_after_send and streamed is None,
                    )
                span.set_status_code(answer.status)
            outcome = str(answer.status)
        except UpstreamConnectError as exc:
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
        except (UpstreamError, OSError) as exc:
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
