"""The sync upstream client: pooled urllib3, one time budget, safe retries.

Off the `/gw` data plane (that is gateway/services/upstream.py, asyncio): the sagas' inventory
calls (sagas/placement.py) run in Celery threads and call `proxy_forward`. The errors, retry
rules and circuit breaker are the ones the async client uses (upstream_errors.py, circuit.py).
Nothing here touches the database or Redis; pools and parsed targets are computed once per
process and reused.
"""

from __future__ import annotations

import contextvars
import http.client
import io
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass
from functools import lru_cache
from typing import Any
from urllib.parse import urlsplit

import urllib3
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool
from urllib3.exceptions import (
    ConnectTimeoutError,
    HTTPError,
    NewConnectionError,
    ReadTimeoutError,
)

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
from gateway.services.upstream_errors import (  # shared with the async client (upstream.py)
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

logger = logging.getLogger("gatehouse.proxy")

_MIN_ATTEMPT_SECONDS = MIN_ATTEMPT_SECONDS


# --- A hard deadline for the response head and a buffered body --------------------------------
# urllib3's read timeout bounds each socket read, not their sum: an upstream sending its status
# line and headers (or a small body) one byte at a time would never trip it. The connections below
# read through a `_BudgetReader`, whose every read may only wait for what is left of the budget.


class _BudgetReader(io.RawIOBase):
    """The socket's reader with one deadline over all its reads, lifted when a body streams.

    The deadline starts from the socket's timeout when the response begins: with
    `urllib3.Timeout(total=…)` that is exactly what is left of the request's budget.
    """

    def __init__(self, raw: io.RawIOBase, sock: Any) -> None:
        self._raw = raw  # the socket's own SocketIO: keeps the descriptor open while it is read
        self._sock = sock
        timeout = sock.gettimeout()
        self.deadline: float | None = None if timeout is None else time.monotonic() + timeout

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int | None:
        if self.deadline is not None:
            remaining = self.deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError("the time budget is spent")
            self._sock.settimeout(remaining)
        return self._raw.readinto(buffer)

    def stream(self, *, read_timeout: float) -> None:
        """From now on each read waits up to `read_timeout` (a streamed body has no deadline)."""
        self.deadline = None
        self._sock.settimeout(read_timeout)

    def close(self) -> None:
        if not self.closed:
            self._raw.close()
        super().close()


class _BudgetHTTPResponse(http.client.HTTPResponse):
    def __init__(self, sock: Any, *args: Any, **kwargs: Any) -> None:
        super().__init__(sock, *args, **kwargs)
        # Nothing was read yet: take the socket reader out of http.client's buffer and put the
        # deadline between them.
        self.budget = _BudgetReader(self.fp.detach(), sock)
        self.fp = io.BufferedReader(self.budget)


class _BudgetResponseMixin:
    budget: _BudgetReader | None = None

    # http.client calls `self.response_class(self.sock, method=…)`; the connection keeps the
    # response's reader so the proxy can lift the deadline once it decides to stream.
    def response_class(self, sock: Any, *args: Any, **kwargs: Any) -> _BudgetHTTPResponse:
        response = _BudgetHTTPResponse(sock, *args, **kwargs)
        self.budget = response.budget
        return response


class _BudgetHTTPConnection(_BudgetResponseMixin, HTTPConnection):
    pass


class _BudgetHTTPSConnection(_BudgetResponseMixin, HTTPSConnection):
    pass


# The request-target exactly as built from the client's (urllib3's urlopen re-encodes it and
# upper-cases escapes: `tilde=%7e` would reach the upstream as `%7E`, breaking signed URLs).
# A context variable is per thread here, so concurrent requests never see each other's target.
_raw_target: contextvars.ContextVar[str | None] = contextvars.ContextVar("raw_target", default=None)


class _RawTargetMixin:
    def _make_request(self, conn: Any, method: str, url: str, *args: Any, **kwargs: Any) -> Any:
        raw = _raw_target.get()
        return super()._make_request(conn, method, raw or url, *args, **kwargs)  # type: ignore[misc]


def _urlopen_raw(pool: HTTPConnectionPool, method: str, url: str, **kwargs: Any) -> Any:
    """`pool.urlopen` sending `url` as the request-target unchanged."""
    token = _raw_target.set(url)
    try:
        return pool.urlopen(method, url, **kwargs)
    finally:
        _raw_target.reset(token)


class _BudgetHTTPConnectionPool(_RawTargetMixin, HTTPConnectionPool):
    ConnectionCls = _BudgetHTTPConnection


class _BudgetHTTPSConnectionPool(_RawTargetMixin, HTTPSConnectionPool):
    ConnectionCls = _BudgetHTTPSConnection


# One pool per target (scheme, host, port); connections are kept alive between requests.
# block=False: a burst above maxsize opens extra connections instead of queueing.
_pools = urllib3.PoolManager(num_pools=512, maxsize=64, block=False, retries=False)
_pools.pool_classes_by_scheme = {"http": _BudgetHTTPConnectionPool, "https": _BudgetHTTPSConnectionPool}


@dataclass(frozen=True, slots=True)
class _Target:
    base: str  # as configured, the circuit and metrics key
    pool: urllib3.HTTPConnectionPool
    host: str  # Host header value
    path_prefix: str  # a target like http://h/api puts /api before the upstream path


@lru_cache(maxsize=4096)
def _target(base: str) -> _Target:
    parts = urlsplit(base)
    return _Target(
        base=base,
        pool=_pools.connection_from_url(base),
        host=parts.netloc,
        path_prefix=parts.path.rstrip("/"),
    )


def response_headers(raw: urllib3.HTTPResponse) -> list[tuple[str, str]]:
    """The upstream's response headers minus hop-by-hop ones; repeated headers stay repeated."""
    return header_rules.response_headers(upstream_headers=raw.headers.iteritems())


class UpstreamResponse:
    """A proxied response: status, headers in upstream order, and either a body or a stream."""

    __slots__ = ("status", "reason", "headers", "body", "stream")

    def __init__(
        self,
        *,
        status: int,
        reason: str,
        headers: list[tuple[str, str]],
        body: bytes | None = None,
        stream: UpstreamStream | None = None,
    ) -> None:
        self.status = status
        self.reason = reason
        self.headers = headers
        self.body = body
        self.stream = stream


class UpstreamStream:
    """Iterates a large upstream body in bounded chunks and always gives the connection back.

    A class rather than a generator: a caller may call close() before the first chunk, and a
    generator that never started would never run its cleanup.
    """

    __slots__ = ("_raw", "_done")

    def __init__(self, raw: urllib3.HTTPResponse) -> None:
        self._raw = raw
        self._done = False

    def __iter__(self) -> Iterator[bytes]:
        yield from self._raw.stream(STREAM_CHUNK_BYTES, decode_content=False)
        self._done = True

    def close(self) -> None:
        if not self._done:
            self._raw.close()  # half-read: the connection cannot be reused
        self._raw.release_conn()


_next_start = next_start
_pick_target = pick_target


def _failure(target: str, service: str) -> None:
    if circuit_record_failure(target=target):
        logger.warning("circuit opened for %s (service %s)", target, service)
        metrics.circuit_opened.labels(service).inc()


def proxy_forward(
    *,
    route: ResolvedRoute,
    method: str,
    path: str,
    query_string: str,
    headers: dict[str, str],
    body: bytes,
    idempotency_key: bool = False,
) -> UpstreamResponse:
    """Send the request to one of the route's targets within `route.timeout_ms`, retrying safely.

    `path` is the upstream path (already rewritten), `query_string` the raw one, forwarded as is.
    `headers` are sent as given; a Host is set per target. urllib3 adds `User-Agent` and
    `Accept-Encoding` unless the caller passes `urllib3.util.SKIP_HEADER` for them.
    Raises BadGateway (502), CircuitOpen (503) or GatewayTimeout (504).
    """
    targets = route.targets
    if not targets:
        raise CircuitOpen("The service has no enabled target.", headers={"Retry-After": "5"})
    deadline = time.monotonic() + route.timeout_ms / 1000
    retry_after_send = method in RETRYABLE_METHODS or idempotency_key
    start = _next_start(targets)
    url_tail = f"{path}?{query_string}" if query_string else path
    send_body = body or None
    service = route.service
    attempt = 0
    while True:
        target_url = _pick_target(targets, start + attempt)
        if target_url is None:
            retry_after = min(circuit_retry_after(target=t) for t in targets)
            raise CircuitOpen(
                f"Every target of {service} is failing; retry later.",
                headers={"Retry-After": str(retry_after)},
            )
        target = _target(target_url)
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            circuit_release_probe(target=target_url)
            raise GatewayTimeout(f"{service} did not answer within {route.timeout_ms} ms.")
        headers["Host"] = target.host
        started = time.perf_counter()
        # One deadline for connect, head and a buffered body (total= plus _BudgetReader).
        timeout = urllib3.Timeout(total=remaining)
        outcome = "error"
        try:
            with telemetry.span(
                "gateway.upstream",
                kind="client",
                attributes={"server.address": target.host, "gateway.attempt": attempt},
            ) as span:
                telemetry.inject(headers)  # the upstream's parent is this attempt's span
                raw = _urlopen_raw(
                    target.pool,
                    method,
                    target.path_prefix + url_tail,
                    body=send_body,
                    headers=headers,
                    retries=False,
                    redirect=False,
                    assert_same_host=False,
                    timeout=timeout,
                    preload_content=False,
                    decode_content=False,
                )
                outcome = str(raw.status)
                span.set_status_code(raw.status)
                response = _read_response(raw, method, stream_read_timeout=remaining)
        except NewConnectionError as exc:
            # Refused / unreachable before one byte went out: safe to retry for every method.
            # (A connect *timeout* is ConnectTimeoutError proper: the budget is spent, see below.)
            _failure(target_url, service)
            last_error: ApplicationError = BadGateway(f"Could not connect to {service}.")
            retryable = True
            outcome = "connect_error"
            logger.info("upstream %s refused the connection: %s", target_url, exc)
        except (ConnectTimeoutError, ReadTimeoutError):
            _failure(target_url, service)
            outcome = "timeout"
            raise GatewayTimeout(f"{service} did not answer within {route.timeout_ms} ms.") from None
        except (HTTPError, OSError) as exc:
            # Reset, closed mid-answer, unparsable status line: the request may have been acted on.
            _failure(target_url, service)
            last_error = BadGateway(f"{service} closed the connection or sent an invalid response.")
            retryable = retry_after_send
            logger.info("upstream %s failed: %r", target_url, exc)
        except BaseException:
            circuit_release_probe(target=target_url)  # a half-open slot must not stay taken
            raise
        else:
            if response.status not in RETRYABLE_STATUSES:
                circuit_record_success(target=target_url)
                return response
            _failure(target_url, service)
            if not retry_after_send or attempt >= route.retry_count:
                return response
            if not _backoff(attempt, deadline):
                return response
            _discard(response)
            attempt += 1
            metrics.upstream_retries.labels(service).inc()
            continue
        finally:
            metrics.upstream_latency.labels(service, outcome).observe(time.perf_counter() - started)
        if not retryable or attempt >= route.retry_count or not _backoff(attempt, deadline):
            raise last_error
        attempt += 1
        metrics.upstream_retries.labels(service).inc()


def _backoff(attempt: int, deadline: float) -> bool:
    """Sleep a full-jitter backoff before the next attempt; False when the budget cannot afford it."""
    delay = backoff_delay(attempt)
    if time.monotonic() + delay + _MIN_ATTEMPT_SECONDS >= deadline:
        return False
    time.sleep(delay)
    return True


def _read_response(raw: urllib3.HTTPResponse, method: str, *, stream_read_timeout: float) -> UpstreamResponse:
    """Read a small body whole, still within the deadline; hand a large one over as a stream."""
    headers = response_headers(raw)
    length = raw.headers.get("Content-Length")
    small = length is not None and length.isdigit() and int(length) <= BUFFER_LIMIT_BYTES
    if method == "HEAD" or raw.status in (204, 304) or small:
        try:
            body = raw.read(decode_content=False)
        except BaseException:
            raw.close()
            raw.release_conn()
            raise
        raw.release_conn()
        return UpstreamResponse(status=raw.status, reason=raw.reason or "", headers=headers, body=body)
    # Streamed: the budget covered the head; each later read may wait what the attempt had left.
    budget = getattr(raw.connection, "budget", None)
    if budget is not None:
        budget.stream(read_timeout=stream_read_timeout)
    return UpstreamResponse(
        status=raw.status, reason=raw.reason or "", headers=headers, stream=UpstreamStream(raw)
    )


def _discard(response: UpstreamResponse) -> None:
    """Drop a response we are about to retry past (its connection is not worth draining)."""
    if response.stream is not None:
        response.stream.close()
