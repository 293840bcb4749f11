"""Shared by the saga commands: parse an id, turn domain errors into a clean CommandError."""

from __future__ import annotations

import uuid

from django.core.management.base import CommandError


def parse_saga_id(value: str) -> uuid.UUID:
    try:
        return uuid.UUID(value)
    except ValueError:
        raise CommandError(f"{value!r} is not a saga id (a UUID).") from None
