"""Saga definitions are code: a class with an ordered tuple of steps, registered by type name.

A step has an action (run by a Celery task under a lease, no transaction open) or none (a wait
step, completed by an event through `saga_wait_complete`), an optional compensation, a timeout
(the lease of one attempt; for a wait step, computed by `deadline`), max attempts and backoff.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, ClassVar

from sagas.models import SagaInstance


class StepRejected(Exception):
    """The other side said no for good (409/422): no retry, the saga compensates."""

    def __init__(self, reason: str, detail: str = "") -> None:
        self.reason = reason
        super().__init__(detail or reason)


class StepRetry(Exception):
    """A transient failure (5xx, timeout, refused): retried with backoff up to max attempts."""


class StepSkipped(Exception):
    """Nothing to do (e.g. no INVENTORY_SERVICE configured): the step is `skipped`."""


@dataclass(frozen=True)
class StepCall:
    """What an action or compensation receives: the saga's id and context, and the key its
    effect must be made idempotent with (the same on every attempt of this step)."""

    saga_id: str
    context: dict[str, Any]
    idempotency_key: str
    attempt: int


StepFunction = Callable[[StepCall], dict[str, Any] | None]


@dataclass(frozen=True)
class Step:
    name: str
    action: StepFunction | None = None  # None: a wait step
    compensation: StepFunction | None = None
    compensation_name: str = ""
    timeout_seconds: float | None = None  # lease per attempt; default SAGA_STEP_LEASE_SECONDS
    max_attempts: int | None = None  # default SAGA_STEP_MAX_ATTEMPTS
    backoff_base_seconds: float | None = None  # default SAGA_BACKOFF_BASE_SECONDS
    key: str = ""  # idempotency key suffix ({saga_id}:{key}); default the step name
    deadline: Callable[[SagaInstance], datetime | None] | None = None  # wait steps

    @property
    def is_wait(self) -> bool:
        return self.action is None

    @property
    def idempotency_suffix(self) -> str:
        return self.key or self.name


class SagaDefinition:
    saga_type: ClassVar[str]
    steps: ClassVar[tuple[Step, ...]]

    @classmethod
    def step(cls, name: str) -> Step:
        for step in cls.steps:
            if step.name == name or step.compensation_name == name:
                return step
        raise KeyError(name)

    # Hooks, each called inside the orchestrator's transaction.
    @classmethod
    def lock_related(cls, saga_reference: str) -> Any:
        """Lock rows the saga's hooks will change, before the saga row (one lock order). What
        it returns (the locked rows) is kept on the saga object as `related` for the hooks that
        run in the same transaction, so they need not read those rows again."""

    @classmethod
    def on_compensation_started(cls, saga: SagaInstance, reason: str) -> None:
        """The saga gave up on its actions (a step rejected or exhausted its attempts)."""

    @classmethod
    def wait_satisfied(cls, saga: SagaInstance, step_name: str) -> bool:
        """Did the event a wait step waits for already happen (before the step started)?"""
        return False

    @classmethod
    def on_deadline(cls, saga: SagaInstance, now: datetime) -> str | None:
        """A wait step is past its deadline: return "compensate", "complete" or None (wait)."""
        return "compensate"


_registry: dict[str, type[SagaDefinition]] = {}


def saga_register(definition: type[SagaDefinition]) -> type[SagaDefinition]:
    names = [step.name for step in definition.steps] + [
        step.compensation_name for step in definition.steps if step.compensation
    ]
    if len(names) != len(set(names)):
        raise ValueError(f"{definition.saga_type}: step names must be unique")
    _registry[definition.saga_type] = definition
    return definition


def saga_definition(saga_type: str) -> type[SagaDefinition]:
    return _registry[saga_type]


def saga_definitions() -> dict[str, type[SagaDefinition]]:
    return dict(_registry)
