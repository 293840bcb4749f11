"""One row per (scope, Idempotency-Key): the claim, then the stored response that is replayed."""

from __future__ import annotations

from django.db import models


class IdempotencyRecord(models.Model):
    class Status(models.TextChoices):
        PROCESSING = "processing", "Processing"
        COMPLETED = "completed", "Completed"
        FAILED = "failed", "Failed"

    # `user:{user_id}|tenant:{tenant_id}` from the verified identity, or `anonymous`.
    scope = models.CharField(max_length=512)
    key = models.CharField(max_length=255)
    method = models.CharField(max_length=16)
    path = models.CharField(max_length=2048)
    # SHA-256 (hex) of method, path, query and body, each length-prefixed (see services).
    request_hash = models.CharField(max_length=64)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.PROCESSING)
    # Fencing token: only the executor holding it may complete or fail the record, so a
    # request whose record was taken over can never overwrite the newer outcome.
    lock_token = models.UUIDField(null=True, blank=True)
    locked_at = models.DateTimeField(null=True, blank=True)
    locked_until = models.DateTimeField(null=True, blank=True)
    response_status = models.PositiveSmallIntegerField(null=True, blank=True)
    response_body = models.BinaryField(null=True, blank=True)
    response_content_type = models.CharField(max_length=255, blank=True, default="")
    response_location = models.CharField(max_length=2048, blank=True, default="")
    # False when the response exceeded IDEMPOTENCY_MAX_RESPONSE_BYTES: the request ran, but its
    # body cannot be replayed (a replay answers 409 idempotency-response-unavailable).
    response_stored = models.BooleanField(default=True)
    created_at = models.DateTimeField()
    completed_at = models.DateTimeField(null=True, blank=True)
    expires_at = models.DateTimeField()

    class Meta:
        db_table = "idempotency_record"
        ordering = ["-created_at"]
        constraints = [
            # The claim: INSERT … ON CONFLICT (scope, key) relies on this. It is also the look-up
            # index, key first so that admin's search by key uses it too (one index less to write
            # on every claim).
            models.UniqueConstraint(fields=["key", "scope"], name="idempotency_key_scope_unique"),
        ]
        indexes = [models.Index(fields=["expires_at"], name="idempotency_expires_at_idx")]

    def __str__(self) -> str:
        return f"{self.scope} {self.key} ({self.status})"
