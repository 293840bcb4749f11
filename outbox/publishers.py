"""Where relayed events go: `log`, `broker` (kombu, publisher confirms) or `webhook` (signed POST).

A publisher receives events of distinct aggregates (the relay sends one "wave" at a time so an
aggregate's next event is only sent after the previous one was confirmed) and returns the events
it could NOT confirm, with the reason. Everything it does not name is confirmed.

Every message carries the `traceparent` stored with its event (the work that wrote it): the
broker's as a message header, the webhook's as an HTTP header. With span export on, each
delivery is an `outbox.deliver` span in that trace, and the traceparent sent names it.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol
from uuid import UUID

import amqp
import kombu
import requests
from amqp.method_framing import frame_writer
from django.conf import settings

from common import telemetry

logger = logging.getLogger(__name__)

CONFIRM_TIMEOUT_SECONDS = 10.0
CONNECT_TIMEOUT_SECONDS = 3.0
WEBHOOK_TIMEOUT = (3.05, 10.0)  # (connect, read) seconds


@dataclass(frozen=True)
class RelayEvent:
    id: UUID
    sequence: int
    aggregatetype: str
    aggregateid: str
    type: str
    payload_json: str  # the stored JSON text, spliced into the envelope as is
    headers: dict[str, Any] = field(default_factory=dict)
    created_at: datetime | None = None
    attempts: int = 0
    ctid: str | None = None  # PostgreSQL row version leased by the claim (a fast path to mark it)

    def body(self) -> bytes:
        """The JSON envelope consumers receive (the same for the broker and the webhook):
        `{id, type, aggregatetype, aggregateid, payload, created_at}`."""
        created_at = self.created_at.isoformat() if self.created_at else None
        return (
            f'{{"id":"{self.id}","type":{_dumps(self.type)},'
            f'"aggregatetype":{_dumps(self.aggregatetype)},'
            f'"aggregateid":{_dumps(self.aggregateid)},'
            f'"payload":{self.payload_json},"created_at":{_dumps(created_at)}}}'
        ).encode()


_dumps = json.JSONEncoder(ensure_ascii=False).encode


def _delivery_span(event: RelayEvent) -> Any:
    """One event's delivery, a span continuing the trace stored with the event (a no-op off)."""
    return telemetry.span(
        "outbox.deliver",
        kind="producer",
        parent_traceparent=event.headers.get("traceparent"),
        attributes={"outbox.event_id": str(event.id), "outbox.event_type": event.type},
    )


def _sent_traceparent(event: RelayEvent, span: Any) -> str | None:
    """The delivery span's traceparent, or (export off) the one stored with the event."""
    return span.traceparent or event.headers.get("traceparent")


Failures = dict[UUID, str]


class Publisher(Protocol):
    def publish(self, events: Sequence[RelayEvent]) -> Failures: ...

    def close(self) -> None: ...


class LogPublisher:
    """Writes each event as one JSON log line; the embedded default with no broker."""

    def publish(self, events: Sequence[RelayEvent]) -> Failures:
        for event in events:
            logger.info("outbox event %s", event.body().decode(), extra={"event_id": str(event.id)})
        return {}

    def close(self) -> None:
        return None


class _CorkedWrites:
    """Stands in for py-amqp's transport in its frame writer: while corked, frames are gathered
    and sent with one sendall per wave instead of one per message (the syscall was the biggest
    single cost of a publish)."""

    def __init__(self, transport: Any) -> None:
        self.transport = transport
        self.pending: list[bytes] | None = None

    def write(self, data: Any) -> None:
        if self.pending is None:
            self.transport.write(data)
        else:
            self.pending.append(bytes(data))  # py-amqp reuses its frame buffer: copy

    def cork(self) -> None:
        self.pending = []

    def uncork(self) -> None:
        pending, self.pending = self.pending, None
        if pending:
            self.transport.write(b"".join(pending))


class BrokerPublisher:
    """kombu to a topic exchange; routing key = event type; persistent; message id = event id.

    On AMQP (RabbitMQ) the channel is put in confirm mode and a whole wave is published before
    waiting for the acks (py-amqp's `confirm_publish` would wait one round trip per message).
    Only acked events count as confirmed; a nack, a timeout or a lost connection fails the
    unacknowledged ones. Other transports (Redis) confirm by returning from the synchronous write.
    """

    def __init__(self, url: str, exchange: str) -> None:
        if not url:
            raise ValueError("OUTBOX_BROKER_URL is empty")
        self.url = url
        self.exchange = kombu.Exchange(exchange, type="topic", durable=True)
        self._connection: kombu.Connection | None = None
        self._producer: kombu.Producer | None = None
        self._confirms = False
        self._next_tag = 1
        self._unacked: OrderedDict[int, UUID] = OrderedDict()
        self._nacked: set[UUID] = set()
        self._in_flight: list[RelayEvent] = []
        self._send_error: str | None = None

    # -- connection -----------------------------------------------------------------------
    def _connect(self) -> kombu.Producer:
        if self._producer is not None:
            return self._producer
        connection = kombu.Connection(self.url, connect_timeout=CONNECT_TIMEOUT_SECONDS)
        try:
            connection.ensure_connection(
                max_retries=1, interval_start=0, interval_step=0, timeout=CONNECT_TIMEOUT_SECONDS
            )
            channel = connection.channel()
            self.exchange(channel).declare()
            self._confirms = connection.transport.driver_type == "amqp"
            if self._confirms:
                raw = connection.connection  # the py-amqp Connection under kombu
                self._writes = _CorkedWrites(raw.transport)
                raw.frame_writer = frame_writer(raw, self._writes)
                channel.confirm_select()
                channel.events["basic_ack"].add(self._on_ack)
                channel.events["basic_nack"].add(self._on_nack)
                self._next_tag = 1
        except Exception:
            connection.release()
            raise
        self._connection = connection
        self._producer = kombu.Producer(channel, exchange=self.exchange)
        return self._producer

    def close(self) -> None:
        connection, self._connection, self._producer = self._connection, None, None
        self._unacked.clear()
        self._nacked.clear()
        if connection is not None:
            try:
                connection.release()
            except Exception:  # closing a broken connection may raise; it is gone either way
                logger.debug("outbox broker connection close failed", exc_info=True)

    # -- confirms -------------------------------------------------------------------------
    def _resolve(self, delivery_tag: int, multiple: bool, nacked: bool) -> None:
        if multiple:
            while self._unacked:
                tag = next(iter(self._unacked))
                if tag > delivery_tag:
                    break
                event_id = self._unacked.pop(tag)
                if nacked:
                    self._nacked.add(event_id)
        else:
            event_id = self._unacked.pop(delivery_tag, None)
            if nacked and event_id is not None:
                self._nacked.add(event_id)

    def _on_ack(self, delivery_tag: int, multiple: bool) -> None:
        self._resolve(delivery_tag, multiple, nacked=False)

    def _on_nack(self, delivery_tag: int, multiple: bool) -> None:
        self._resolve(delivery_tag, multiple, nacked=True)

    # -- publishing -----------------------------------------------------------------------
    def publish(self, events: Sequence[RelayEvent]) -> Failures:
        self.send(events)
        return self.wait()

    def send(self, events: Sequence[RelayEvent]) -> None:
        """Write the messages; `wait()` then reports what the broker did not confirm. The relay
        claims its next batch in between, while the broker persists and acks.

        A kept-open connection may have died while idle (broker restart, NAT timeout): a write
        failing on a reused connection is retried once on a fresh one before events are failed.
        Anything the broker got from the first try is a duplicate, which consumers dedupe."""
        self._in_flight = list(events)
        self._send_error = None
        for attempt in (1, 2):
            reused = self._producer is not None
            try:
                self._write(self._connect(), events)
                return
            except Exception as exc:
                self._send_error = f"broker: {type(exc).__name__}: {exc}"
                self.close()  # unknown channel state: start over with a fresh connection
                if not reused or attempt == 2:
                    return
                logger.info("outbox broker connection lost, reconnecting: %s", exc)
                self._send_error = None

    def _write(self, producer: kombu.Producer, events: Sequence[RelayEvent]) -> None:
        if self._confirms:
            self._publish_amqp(producer, events)
            return
        for event in events:  # e.g. Redis: the write returning is the confirmation
            with _delivery_span(event) as span:
                producer.publish(
                    event.body(),
                    routing_key=event.type,
                    content_type="application/json",
                    content_encoding="utf-8",
                    delivery_mode=2,
                    message_id=str(event.id),
                    headers=self._headers(event, _sent_traceparent(event, span)),
                    retry=False,
                )

    def wait(self) -> Failures:
        events, self._in_flight = self._in_flight, []
        if self._send_error is None and self._confirms:
            try:
                self._wait_for_confirms()
            except Exception as exc:
                self._send_error = f"broker: {type(exc).__name__}: {exc}"
                self.close()
        if self._send_error is not None:
            return {event.id: self._send_error for event in events}
        nacked, self._nacked = self._nacked, set()
        return {event.id: "broker: nacked" for event in events if event.id in nacked}

    @staticmethod
    def _headers(event: RelayEvent, traceparent: str | None) -> dict[str, Any]:
        headers: dict[str, Any] = {
            "aggregatetype": event.aggregatetype,
            "aggregateid": event.aggregateid,
            "sequence": event.sequence,
        }
        if correlation_id := event.headers.get("correlation_id"):
            headers["correlation_id"] = str(correlation_id)
        if traceparent:
            headers["traceparent"] = traceparent
        return headers

    def _publish_amqp(self, producer: kombu.Producer, events: Sequence[RelayEvent]) -> None:
        """The whole wave goes out before any ack is awaited (pipelined publisher confirms).

        kombu's Producer.publish costs more per message than the broker round trip saved, so
        the frames are written on kombu's own channel with py-amqp's basic_publish."""
        channel = producer.channel
        exchange = self.exchange.name
        self._writes.cork()
        try:
            self._publish_frames(channel, exchange, events)
        finally:
            self._writes.uncork()

    def _publish_frames(self, channel: Any, exchange: str, events: Sequence[RelayEvent]) -> None:
        for event in events:
            with _delivery_span(event) as span:  # the write; the wave's confirms come after
                message = amqp.Message(
                    event.body(),
                    content_type="application/json",
                    content_encoding="utf-8",
                    delivery_mode=2,  # persistent
                    message_id=str(event.id),
                    application_headers=self._headers(event, _sent_traceparent(event, span)),
                )
                self._unacked[self._next_tag] = event.id
                self._next_tag += 1
                channel.basic_publish(message, exchange=exchange, routing_key=event.type)

    def _wait_for_confirms(self) -> None:
        assert self._connection is not None
        deadline = time.monotonic() + CONFIRM_TIMEOUT_SECONDS
        while self._unacked:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"{len(self._unacked)} publishes unconfirmed")
            try:
                self._connection.drain_events(timeout=remaining)
            except TimeoutError as exc:
                raise TimeoutError(f"{len(self._unacked)} publishes unconfirmed") from exc


class WebhookPublisher:
    """POSTs the event envelope, signed `X-Signature: sha256=<hex HMAC-SHA256(body, secret)>`."""

    def __init__(self, url: str, secret: str) -> None:
        if not url:
            raise ValueError("OUTBOX_WEBHOOK_URL is empty")
        self.url = url
        self.secret = secret.encode()
        self.session = requests.Session()
        adapter = requests.adapters.HTTPAdapter(pool_connections=1, pool_maxsize=4, max_retries=0)
        self.session.mount("http://", adapter)
        self.session.mount("https://", adapter)

    def sign(self, body: bytes) -> str:
        return "sha256=" + hmac.new(self.secret, body, hashlib.sha256).hexdigest()

    def publish(self, events: Sequence[RelayEvent]) -> Failures:
        failures: Failures = {}
        for event in events:
            body = event.body()
            headers = {
                "Content-Type": "application/json",
                "X-Signature": self.sign(body),
                "X-Event-Id": str(event.id),
            }
            if correlation_id := event.headers.get("correlation_id"):
                headers["X-Correlation-ID"] = str(correlation_id)
            with _delivery_span(event) as span:
                if traceparent := _sent_traceparent(event, span):
                    headers["traceparent"] = traceparent
                try:
                    response = self.session.post(
                        self.url, data=body, headers=headers, timeout=WEBHOOK_TIMEOUT
                    )
                except requests.RequestException as exc:
                    failures[event.id] = f"webhook: {type(exc).__name__}: {exc}"
                    span.set_error(failures[event.id])
                    continue
                span.set_status_code(response.status_code)
                if not 200 <= response.status_code < 300:
                    failures[event.id] = f"webhook: HTTP {response.status_code} {response.text[:200]}"
        return failures

    def close(self) -> None:
        self.session.close()


_cached: tuple[tuple[str, ...], Publisher] | None = None


def publisher_from_settings() -> Publisher:
    """The publisher chosen by OUTBOX_PUBLISHER; kept per process so connections are reused."""
    global _cached
    kind = settings.OUTBOX_PUBLISHER
    key = (
        kind,
        settings.OUTBOX_BROKER_URL,
        settings.OUTBOX_EXCHANGE,
        settings.OUTBOX_WEBHOOK_URL,
        settings.OUTBOX_WEBHOOK_SECRET,
    )
    if _cached is not None and _cached[0] == key:
        return _cached[1]
    if _cached is not None:
        _cached[1].close()
        _cached = None
    publisher: Publisher
    if kind == "log":
        publisher = LogPublisher()
    elif kind == "broker":
        publisher = BrokerPublisher(settings.OUTBOX_BROKER_URL, settings.OUTBOX_EXCHANGE)
    elif kind == "webhook":
        publisher = WebhookPublisher(settings.OUTBOX_WEBHOOK_URL, settings.OUTBOX_WEBHOOK_SECRET)
    else:
        raise ValueError(f"unknown OUTBOX_PUBLISHER {kind!r} (log, broker or webhook)")
    _cached = (key, publisher)
    return publisher


def close_cached_publisher() -> None:
    """Close the per-process publisher (tests, or after changing the OUTBOX_* settings)."""
    global _cached
    if _cached is not None:
        _cached[1].close()
        _cached = None
