"""The gateway's two-level caches: a per-process local layer, Redis (JSON) when REDIS_URL is set,
and the invalidation bus (Redis pub/sub, or a polled database log without it).

- `gateway.caching.two_level.TwoLevelCache`: the generic cache (sync `get`, async `aget`).
- `gateway.caching.registry`: caches registered here are subscribed to the bus in
  `GatewayConfig.ready()`.
- `gateway.caching.db_bus`: the database leg of the bus (embedded mode, Redis down).
"""
