"""Outbox rows for tests, written the way business code writes them (through the service)."""

from __future__ import annotations

import random

import factory
from django.db import transaction

from outbox.models import OutboxEvent
from outbox.services import outbox_publish_many


class OutboxEventFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = OutboxEvent

    aggregatetype = "order"
    aggregateid = factory.Sequence(lambda n: f"agg-{n}")
    type = "order.created"
    payload = factory.LazyAttribute(lambda event: {"aggregateid": event.aggregateid})


def publish_events(
    *, count: int, aggregates: int, shuffle: bool = True, aggregatetype: str = "order"
) -> dict[str, int]:
    """Commit `count` events spread over `aggregates` aggregates; payload `n` numbers each
    aggregate's events 0, 1, 2… in write order. Returns events per aggregate id."""
    owners = [f"a{index % aggregates}" for index in range(count)]
    if shuffle:
        random.Random(7).shuffle(owners)
    per_aggregate: dict[str, int] = {}
    events = []
    for owner in owners:
        n = per_aggregate.get(owner, 0)
        per_aggregate[owner] = n + 1
        events.append(
            {
                "aggregatetype": aggregatetype,
                "aggregateid": owner,
                "type": "order.updated",
                "payload": {"n": n, "aggregate": owner},
            }
        )
    with transaction.atomic():
        outbox_publish_many(events=events)
    return per_aggregate
