"""A fake inventory service (a real HTTP server on 127.0.0.1) and helpers to drive sagas.

The service keeps reservations like a real one: a POST with an Idempotency-Key it has seen
answers as before without a second effect; it counts every request and every effect per
reservation id. Its mode (accept, reject, fail, hang) can be set per operation.
"""

from __future__ import annotations

import json
import threading
import uuid
from collections import Counter
from datetime import datetime, timedelta
from decimal import Decimal

import pytest
from django.utils import timezone

from gateway.models import Service, ServiceTarget
from orders.payments import PaymentEvent, payment_event_handle
from orders.services import OrderItemData, order_create
from sagas.models import SagaInstance, SagaStep, StepStatus
from sagas.services import saga_step_run
from tests.support.servers import RecordedRequest, Reply

INVENTORY = "inventory-test"


class FakeInventory:
    """modes: "accept" | "reject" (409) | "invalid" (422) | "fail" (503) | "hang" (acts, then
    answers `hang_seconds` late; `hang_once`: only the first request hangs)."""

    def __init__(self) -> None:
        self.modes = {"reserve": "accept", "confirm": "accept", "release": "accept"}
        self.hang_seconds = 5.0
        self.hang_once = False
        self.requests: Counter[tuple[str, str]] = Counter()  # (operation, reservation id)
        self.effects: Counter[tuple[str, str]] = Counter()
        self.keys: dict[str, int] = {}
        self.reserved: dict[str, str] = {}  # reservation id → held | confirmed
        self.bodies: list[dict] = []
        self.headers: list[dict[str, str]] = []
        self.lock = threading.Lock()

    def __call__(self, request: RecordedRequest) -> Reply:
        parts = request.path.strip("/").split("/")
        if request.method == "POST" and parts == ["reservations"]:
            operation, reservation_id = "reserve", json.loads(request.body)["reservation_id"]
        elif request.method == "POST" and len(parts) == 3 and parts[2] == "confirm":
            operation, reservation_id = "confirm", parts[1]
        elif request.method == "DELETE" and len(parts) == 2:
            operation, reservation_id = "release", parts[1]
        else:
            return Reply(404)
        key = request.header("Idempotency-Key") or ""
        with self.lock:
            self.requests[operation, reservation_id] += 1
            self.headers.append({"operation": operation, "key": key})
            if request.body:
                self.bodies.append(json.loads(request.body))
            mode = self.modes[operation]
            if mode == "hang" and self.hang_once:
                self.modes[operation] = "accept"
        if mode == "fail":
            return Reply(503, b'{"error": "down"}')
        if mode in ("reject", "invalid"):
            return Reply(409 if mode == "reject" else 422, b'{"error": "out of stock"}')
        with self.lock:
            if key and key in self.keys:
                return Reply(self.keys[key], b"{}")  # a replay: no second effect
            status = 200
            if operation == "reserve":
                self.reserved[reservation_id] = "held"
            elif operation == "confirm":
                self.reserved[reservation_id] = "confirmed"
            elif reservation_id in self.reserved:
                del self.reserved[reservation_id]
            else:
                status = 404
            if status == 200:
                self.effects[operation, reservation_id] += 1
            if key:
                self.keys[key] = status
        # "hang": the effect happens, the answer comes too late (the caller may be gone by then).
        return Reply(status, b"{}", delay=self.hang_seconds if mode == "hang" else 0.0)


@pytest.fixture
def inventory(http_server_factory, settings):
    fake = FakeInventory()
    server = http_server_factory(fake)
    service = Service.objects.create(name=INVENTORY)
    ServiceTarget.objects.create(service=service, url=server.url)
    settings.INVENTORY_SERVICE = INVENTORY
    settings.GATEWAY_CIRCUIT_FAILURES = 1000  # these tests count attempts, not circuit states
    fake.url = server.url  # type: ignore[attr-defined]
    return fake


@pytest.fixture(autouse=True)
def _fast_sagas(settings):
    settings.SAGA_STEP_LEASE_SECONDS = 1.0
    settings.SAGA_BACKOFF_BASE_SECONDS = 0.01
    settings.SAGA_BACKOFF_CAP_SECONDS = 0.05
    settings.SAGA_STEP_MAX_ATTEMPTS = 3


def place_order(**overrides):
    return order_create(
        user_id="u1",
        tenant_id="t1",
        store_id=uuid.uuid4(),
        currency="USD",
        delivery_address="1 Main St",
        contact_phone="+14155550100",
        items=[OrderItemData(sku="SKU-1", name="Widget", quantity=2, unit_price=Decimal("10.00"))],
        **overrides,
    )


def saga_of(order) -> SagaInstance:
    return SagaInstance.objects.get(reference=str(order.id))


def steps_of(saga: SagaInstance) -> dict[tuple[str, str], SagaStep]:
    return {(step.name, step.kind): step for step in SagaStep.objects.filter(saga=saga)}


def pay(order, *, event_id: str = "evt-1", type: str = "payment.success", now: datetime | None = None):
    return payment_event_handle(
        event=PaymentEvent(
            event_id=event_id,
            type=type,
            order_id=order.id,
            amount=order.total_amount,
            currency=order.currency,
            provider_reference=f"psp-{event_id}",
        ),
        now=now,
    )


def drive(*, now: datetime | None = None, rounds: int = 50) -> int:
    """Run every due step in this process (what the workers would do), until none is due.

    `now` moves the clock forward for backoff and leases; returns how many attempts ran."""
    ran = 0
    for _ in range(rounds):
        moment = now or timezone.now() + timedelta(seconds=1)
        due = [
            (str(step.saga_id), step.name, step.kind)
            for step in SagaStep.objects.filter(
                status__in=[StepStatus.PENDING, StepStatus.RUNNING]
            ).select_related("saga")
            if (step.status == StepStatus.PENDING and step.not_before is not None)
            or (
                step.status == StepStatus.RUNNING
                and step.lease_expires_at
                and step.lease_expires_at <= moment
            )
        ]
        progressed = False
        for saga_id, name, kind in due:
            result = saga_step_run(saga_id=saga_id, name=name, kind=kind, now=moment)
            if result.outcome not in ("not_claimed", "stale"):
                ran += 1
                progressed = True
        if not progressed:
            return ran
    return ran
