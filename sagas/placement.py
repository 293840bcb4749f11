"""The order placement saga (`order.placement`, SPEC §8): reserve stock, await the payment,
confirm the reservation; release it when the payment fails, the order expires or is cancelled,
or a step cannot complete.

The inventory calls go to the targets of the gateway Service named by INVENTORY_SERVICE through
the gateway's pooled client (gateway.services.proxy.proxy_forward with no retries of its own:
the orchestrator retries with backoff), so they share its per-target circuit breaker. Without
INVENTORY_SERVICE the inventory steps are skipped. The order hooks below run inside the order
flow's transactions, with the order row already locked (the lock order is order, then saga).
"""

from __future__ import annotations

import json
import uuid
from datetime import datetime
from typing import Any

from django.conf import settings

from common.correlation import get_correlation_id
from common.local_cache import LocalTTLCache
from sagas import services
from sagas.definitions import (
    SagaDefinition,
    Step,
    StepCall,
    StepRejected,
    StepRetry,
    StepSkipped,
    saga_register,
)
from sagas.models import SagaInstance, SagaStatus

SAGA_TYPE = "order.placement"
CONSUMER_GROUP = "sagas.order.placement"
REJECTED = "inventory_rejected"
UNAVAILABLE = "inventory_unavailable"
INVENTORY_TIMEOUT_MS = 3000


class InventoryNotConfigured(StepSkipped):
    pass


# The inventory Service's enabled targets, per process for a moment: a step no longer reads
# them on every call. A routes change (service_targets_set, the admin) clears it in every
# process that hears the invalidation bus; elsewhere it is at most this old.
INVENTORY_TARGETS_TTL_SECONDS = 2.0
_targets_cache = LocalTTLCache("saga-inventory-targets", ttl_seconds=INVENTORY_TARGETS_TTL_SECONDS)


def inventory_targets_forget(payload: dict | None = None) -> None:
    """The "routes" invalidation handler (sagas/apps.py)."""
    _targets_cache.clear()


def _inventory_route():  # type: ignore[no-untyped-def]
    from gateway.models import ServiceTarget
    from gateway.types import ResolvedRoute

    name = settings.INVENTORY_SERVICE
    if not name:
        raise InventoryNotConfigured("INVENTORY_SERVICE is not set")
    targets = _targets_cache.get(name)
    if targets is None:
        targets = tuple(
            ServiceTarget.objects.filter(service__name=name, service__enabled=True, enabled=True)
            .order_by("id")
            .values_list("url", flat=True)
        )
        if targets:  # none: looked up again on the next attempt
            _targets_cache.set(name, targets)
    if not targets:
        raise StepRetry(f"the service {name!r} has no enabled target")
    return ResolvedRoute(
        id=0,
        methods=(),
        path="",
        service=name,
        targets=targets,
        timeout_ms=INVENTORY_TIMEOUT_MS,
        retry_count=0,
    )


def inventory_call(
    *, method: str, path: str, idempotency_key: str, body: dict[str, Any] | None = None
) -> int:
    """One call to the inventory service; returns the status, StepRetry on a transport failure."""
    from urllib3.util import SKIP_HEADER

    from gateway.services.proxy import proxy_forward

    headers = {
        "Idempotency-Key": idempotency_key,
        "X-Correlation-Id": get_correlation_id() or "",
        "User-Agent": SKIP_HEADER,
        "Accept-Encoding": SKIP_HEADER,
    }
    payload = b""
    if body is not None:
        payload = json.dumps(body).encode()
        headers["Content-Type"] = "application/json"
    try:
        response = proxy_forward(
            route=_inventory_route(),
            method=method,
            path=path,
            query_string="",
            headers=headers,
            body=payload,
            idempotency_key=True,
        )
    except StepSkipped:
        raise
    except StepRetry:
        raise
    except Exception as exc:  # BadGateway, GatewayTimeout, CircuitOpen (problem errors) and the like
        raise StepRetry(f"{method} {path}: {getattr(exc, 'detail', exc)}") from None
    if response.stream is not None:
        response.stream.close()
    return response.status


def reserve_inventory(call: StepCall) -> dict[str, Any]:
    reservation_id = call.context["reservation_id"]
    status = inventory_call(
        method="POST",
        path="/reservations",
        idempotency_key=call.idempotency_key,
        body={
            "reservation_id": reservation_id,
            "order_id": call.context["order_id"],
            "items": call.context["items"],
        },
    )
    if 200 <= status < 300:
        return {"reserved": True}
    if status in (409, 422):
        raise StepRejected(REJECTED, f"inventory answered {status}")
    raise StepRetry(f"inventory answered {status}")


def confirm_inventory(call: StepCall) -> dict[str, Any]:
    if not call.context.get("reserved"):
        raise StepSkipped("nothing was reserved")
    status = inventory_call(
        method="POST",
        path=f"/reservations/{call.context['reservation_id']}/confirm",
        idempotency_key=call.idempotency_key,
    )
    if 200 <= status < 300:
        return {"confirmed": True}
    raise StepRetry(f"inventory answered {status}")


def release_inventory(call: StepCall) -> dict[str, Any]:
    status = inventory_call(
        method="DELETE",
        path=f"/reservations/{call.context['reservation_id']}",
        idempotency_key=call.idempotency_key,
    )
    if 200 <= status < 300 or status == 404:  # 404: nothing held, which is what release means
        return {"released": True}
    raise StepRetry(f"inventory answered {status}")


def _order(saga: SagaInstance) -> Any:
    """The saga's order, locked: the row `lock_related` locked in this transaction (kept on the
    saga as `related`; order_transition keeps it current), else read (the caller holds its lock)."""
    from orders.models import Order

    related = getattr(saga, "related", None)
    if related is not None:
        return related[0] if related else None
    return Order.objects.filter(pk=saga.reference).first()


def _order_expiry(saga: SagaInstance) -> datetime | None:
    return datetime.fromisoformat(saga.context["expiration_time"])


@saga_register
class OrderPlacement(SagaDefinition):
    saga_type = SAGA_TYPE
    steps = (
        Step(
            "reserve_inventory",
            action=reserve_inventory,
            compensation=release_inventory,
            compensation_name="release_inventory",
            key="reserve",
        ),
        Step("await_payment", deadline=_order_expiry),
        Step("confirm_inventory", action=confirm_inventory, key="confirm"),
    )

    @classmethod
    def lock_related(cls, saga_reference: str) -> list[Any]:
        from orders.locks import orders_lock

        return orders_lock(order_ids=[saga_reference])

    @classmethod
    def on_compensation_started(cls, saga: SagaInstance, reason: str) -> None:
        """A step gave up (rejected, unavailable, operator): a still pending order is cancelled;
        a paid one (its stock could not be confirmed) is cancelled and its payment refunded,
        never left paid for stock it does not have. (The order row is locked already.)"""
        from django.utils import timezone

        from orders import events
        from orders.models import OrderStatus
        from orders.payments import payment_refund_unfulfilled
        from orders.services import order_transition

        order = _order(saga)
        if order is None:
            return
        if order.status == OrderStatus.PAID:
            payment = saga.context.get("payment") or {}
            payment_refund_unfulfilled(
                order=order,
                reason=reason,
                payment_event_id=payment.get("event_id"),
                consumer_group_name=payment.get("consumer_group_name"),
                now=timezone.now(),
            )
        elif order.status == OrderStatus.PENDING_PAYMENT and order_transition(
            order=order, to=OrderStatus.CANCELLED, now=timezone.now()
        ):
            events.order_event_publish(order=order, type=events.ORDER_CANCELLED, reason=reason)

    @classmethod
    def wait_satisfied(cls, saga: SagaInstance, step_name: str) -> bool:
        """The order was paid while the stock was being reserved (the order row is locked)."""
        from orders.models import OrderStatus

        order = _order(saga)
        return order is not None and order.status == OrderStatus.PAID

    @classmethod
    def on_deadline(cls, saga: SagaInstance, now: datetime) -> str | datetime | None:
        from orders.models import OrderStatus

        order = _order(saga)
        if order is None or order.status in (OrderStatus.EXPIRED, OrderStatus.CANCELLED):
            return "compensate"
        if order.status == OrderStatus.PAID:
            return "complete"  # the payment's hook was missed; the order says paid
        if order.expiration_time > now:  # extended by staff
            return order.expiration_time
        return None  # the expiry sweep has not reached it yet: it will compensate


# --- hooks called by the order flow, inside its transactions, the order row locked ----------
def placement_start(*, order: Any, items: list[dict[str, Any]], now: datetime) -> SagaInstance:
    saga_id = uuid.uuid4()
    saga = services.saga_start(
        saga_type=SAGA_TYPE,
        reference=str(order.id),
        context={
            "order_id": str(order.id),
            "reservation_id": str(saga_id),
            "items": [{"sku": item["sku"], "quantity": item["quantity"]} for item in items],
            "expiration_time": order.expiration_time.isoformat(),
        },
        now=now,
        saga_id=saga_id,
    )
    return saga


def placement_order_paid(
    *, order_id: Any, payment_event_id: str, consumer_group_name: str, now: datetime
) -> bool:
    """The order was paid: await_payment completes (the saga row locked, the payment recorded,
    the step completed and confirm_inventory scheduled in one statement; the caller holds the
    order lock). The payment event is kept in the context (also when it comes before the step
    started), so a later compensation refunds that payment."""
    return services.saga_wait_complete(
        saga_type=SAGA_TYPE,
        reference=str(order_id),
        step_name="await_payment",
        event_id=f"{payment_event_id}",
        consumer_group_name=CONSUMER_GROUP,
        update={"payment": {"event_id": payment_event_id, "consumer_group_name": consumer_group_name}},
        now=now,
    )


def placement_order_closed(*, order_id: Any, reason: str, now: datetime) -> bool:
    """The order was cancelled or expired: release what the saga holds (once)."""
    saga = services.saga_lock_by_reference(saga_type=SAGA_TYPE, reference=str(order_id))
    if saga is None or saga.status != SagaStatus.RUNNING:
        return False
    return services.saga_close(saga=saga, definition=OrderPlacement, reason=reason, now=now)


def placement_orders_expired(*, now: datetime) -> int:
    """After an expiry sweep batch (same transaction): every placement saga awaiting a payment
    whose order the batch expired compensates. The saga's deadline is the order's expiry, so
    the candidates are found on the open-deadline index; their orders are locked already."""
    from orders.models import Order, OrderStatus

    candidates = list(
        SagaInstance.objects.filter(
            saga_type=SAGA_TYPE, status=SagaStatus.RUNNING, deadline__lte=now
        ).values_list("reference", flat=True)
    )
    if not candidates:
        return 0
    expired = Order.objects.filter(pk__in=candidates, status=OrderStatus.EXPIRED).values_list("pk", flat=True)
    closed = 0
    for order_id in expired:
        closed += placement_order_closed(order_id=order_id, reason="order_expired", now=now)
    return closed
