"""The order flow's problem+json errors (common/errors.py shapes, one slug each)."""

from __future__ import annotations

from common.errors import ApplicationError, Conflict, NotFound, Unprocessable


class OrderNotFound(NotFound):
    slug, title = "order-not-found", "Order not found"


class OrderNotPending(Conflict):
    slug, title = "order-not-pending", "Order is no longer pending payment"


class PaymentAmountMismatch(Unprocessable):
    slug, title = "payment-amount-mismatch", "Payment does not match the order"


class PaymentSignatureInvalid(ApplicationError):
    status, slug, title = 401, "invalid-signature", "Invalid payment event signature"

    def __init__(self, detail: str | None = None) -> None:
        super().__init__(detail, headers={"WWW-Authenticate": 'Signature realm="payment-events"'})


class ConcurrentSweep(Conflict):
    slug, title = "concurrent-sweep", "Another expiry sweep changed these orders"
