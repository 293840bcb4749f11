"""Prometheus figures for the order flow (incremented only after the transaction commits)."""

from __future__ import annotations

from prometheus_client import Counter

ORDERS_EXPIRED = Counter(
    "gatehouse_orders_expired_total",
    "Orders moved from pending_payment to expired.",
    ["source"],  # sweep | payment | admin
)
PAYMENT_EVENTS = Counter(
    "gatehouse_payment_events_total",
    "Payment events handled, by outcome (paid, cancelled, payment_after_expiry, duplicate, …).",
    ["outcome", "channel"],  # channel: http | broker
)
