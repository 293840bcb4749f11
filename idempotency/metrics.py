"""Prometheus counters for idempotency (exposed at /metrics)."""

from prometheus_client import Counter

# entry: "api" (DRF decorator) or "gateway" (proxy path)
IDEMPOTENCY_REPLAYS = Counter(
    "idempotency_replays_total",
    "Stored responses replayed for a repeated Idempotency-Key",
    ["entry", "source"],  # source: local, redis, database
)
IDEMPOTENCY_CONFLICTS = Counter(
    "idempotency_conflicts_total",
    "Idempotency-Key reused with a different request (idempotency-key-reused)",
    ["entry"],
)
IDEMPOTENCY_IN_PROGRESS = Counter(
    "idempotency_in_progress_total",
    "Requests refused because the same key was still processing (idempotency-in-progress)",
    ["entry"],
)
IDEMPOTENCY_RECORDS_CREATED = Counter(
    "idempotency_records_created_total",
    "Idempotency claims: new records, and takeovers of failed, stale or expired ones",
    ["entry", "kind"],  # kind: new, takeover
)
IDEMPOTENCY_OUTCOMES = Counter(
    "idempotency_outcomes_total",
    "Executions finished under an idempotency claim",
    ["entry", "outcome"],  # outcome: completed, failed, lock_lost
)
IDEMPOTENCY_PURGED = Counter("idempotency_purged_total", "Expired idempotency records deleted")
