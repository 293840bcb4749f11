"""django-redis serializer of the shared cache: JSON text, never pickle.

Every value the project puts through `django.core.cache` is JSON-able (the gateway's value types
are encoded explicitly by `gateway.caching.codecs`, the response cache and the idempotency cache),
so `redis-cli GET` shows JSON, and a value planted in a compromised Redis cannot run code here:
whatever is not JSON (an old pickle, garbage) reads as a miss.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from django_redis.serializers.base import BaseSerializer

logger = logging.getLogger("gatehouse.cache")


class JSONCacheSerializer(BaseSerializer):
    def dumps(self, value: Any) -> bytes:
        return json.dumps(value, separators=(",", ":")).encode()

    def loads(self, value: bytes) -> Any:
        try:
            return json.loads(value)
        except (ValueError, UnicodeDecodeError) as exc:
            logger.warning("a cached value that is not JSON was ignored: %s", exc)
            return None
