"""django-redis serializer for the values that are still pickled (routes, responses, idempotency
records, until they move to JSON): it writes pickle as before, but reads with an unpickler that
only resolves an allow-list of plain classes, so a value planted in a compromised Redis cannot run
code here (`find_class` is where pickle's code execution goes through). Anything else is a miss.
The gateway's own two-level caches (rbac, revoked, jwks) store JSON and never reach this.
"""

from __future__ import annotations

import io
import logging
import pickle
from typing import Any

from django_redis.serializers.pickle import PickleSerializer

logger = logging.getLogger("gatehouse.cache")

ALLOWED_GLOBALS = frozenset(
    {
        ("builtins", "frozenset"),
        ("builtins", "set"),
        ("builtins", "bytearray"),
        ("builtins", "complex"),
        ("builtins", "slice"),
        ("copyreg", "_reconstructor"),
        ("builtins", "object"),
        ("datetime", "datetime"),
        ("datetime", "date"),
        ("datetime", "time"),
        ("datetime", "timedelta"),
        ("datetime", "timezone"),
        ("decimal", "Decimal"),
        ("uuid", "UUID"),
        ("collections", "OrderedDict"),
        ("gateway.types", "ResolvedRoute"),
        ("gateway.types", "RouteMatch"),
        ("gateway.types", "Identity"),
        ("idempotency.cache", "CachedRecord"),
        ("idempotency.cache", "StoredResponse"),
    }
)


class RefusedPickle(pickle.UnpicklingError):
    pass


class _AllowListUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in ALLOWED_GLOBALS:
            raise RefusedPickle(f"{module}.{name} is not allowed in the shared cache")
        return super().find_class(module, name)


class AllowListPickleSerializer(PickleSerializer):
    """PickleSerializer whose `loads` refuses every class outside ALLOWED_GLOBALS (a miss)."""

    def loads(self, value: bytes) -> Any:
        try:
            return _AllowListUnpickler(io.BytesIO(value)).load()
        except RefusedPickle as exc:
            logger.error("refused a cached value: %s", exc)
            return None
        except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError) as exc:
            logger.warning("unreadable cached value ignored: %s", exc)
            return None
