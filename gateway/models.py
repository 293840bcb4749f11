"""Services (backends) and routes, edited in admin or loaded with `manage.py load_routes`."""

from __future__ import annotations

from django.core.validators import MaxValueValidator, MinValueValidator, RegexValidator
from django.db import models

HTTP_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


class Service(models.Model):
    name = models.CharField(
        max_length=200,
        unique=True,
        validators=[RegexValidator(r"^[A-Za-z0-9][A-Za-z0-9._\-]*$", "Letters, digits, '.', '-' and '_'.")],
        help_text="e.g. user-service.master",
    )
    description = models.CharField(max_length=500, blank=True)
    enabled = models.BooleanField(default=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name


class ServiceTarget(models.Model):
    """One base URL of a service; requests are spread round-robin over enabled targets."""

    service = models.ForeignKey(Service, on_delete=models.CASCADE, related_name="targets")
    url = models.URLField(max_length=500, help_text="Base URL, e.g. http://10.0.0.5:8080")
    enabled = models.BooleanField(default=True)

    class Meta:
        ordering = ["id"]
        constraints = [models.UniqueConstraint(fields=["service", "url"], name="service_target_unique_url")]

    def __str__(self) -> str:
        return self.url


class Route(models.Model):
    class Idempotency(models.TextChoices):
        OFF = "off", "Off"
        OPTIONAL = "optional", "Optional"
        REQUIRED = "required", "Required"

    methods = models.JSONField(default=list, help_text='HTTP methods, e.g. ["GET", "HEAD"]')
    path = models.CharField(max_length=500, help_text="Pattern: literals, {name}, * (one segment), ** (rest)")
    service = models.ForeignKey(Service, on_delete=models.PROTECT, related_name="routes")
    rewrite = models.CharField(
        max_length=500, blank=True, help_text="Upstream path template, e.g. /v2/users/{user_id}"
    )
    required_permission = models.CharField(max_length=200, blank=True)
    condition = models.JSONField(default=dict, blank=True, help_text='e.g. {"user_id": "{{X-User-ID}}"}')
    timeout_ms = models.PositiveIntegerField(
        default=3000, validators=[MinValueValidator(1), MaxValueValidator(300_000)]
    )
    retry_count = models.PositiveSmallIntegerField(default=2, validators=[MaxValueValidator(10)])
    auth_required = models.BooleanField(default=True)
    cache_ttl_seconds = models.PositiveIntegerField(default=0, validators=[MaxValueValidator(86_400)])
    idempotency = models.CharField(max_length=8, choices=Idempotency.choices, default=Idempotency.OFF)
    priority = models.IntegerField(default=0, help_text="Higher wins among equally specific patterns")
    policies = models.JSONField(
        default=dict,
        blank=True,
        help_text="Rate limit, CORS, IP rules, header transforms (docs/gateway-policies.md), e.g. "
        '{"rate_limit": {"limit": 100, "window_seconds": 60, "key": "user"}}',
    )
    enabled = models.BooleanField(default=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        db_table = "route_config"
        ordering = ["path", "id"]
        indexes = [models.Index(fields=["enabled", "path"], name="route_enabled_path_idx")]

    def __str__(self) -> str:
        return f"{','.join(self.methods)} {self.path}"


class RoutesVersion(models.Model):
    """One row, bumped in the transaction of every route or service change.

    The database's own "routes changed" signal, polled by processes that cannot hear the Redis
    invalidation messages (embedded mode with several workers, or Redis down), so a change still
    reaches them within a fraction of a second.
    """

    id = models.PositiveSmallIntegerField(primary_key=True, default=1)
    version = models.BigIntegerField(default=0)

    class Meta:
        db_table = "gateway_routes_version"

    def __str__(self) -> str:
        return f"routes version {self.version}"


class RevokedToken(models.Model):
    """A revoked token's `jti`, kept until the token would have expired anyway.

    The database is the durable record (survives Redis restarts and outages, lasts the token's
    lifetime); `revoked:{jti}` in Redis is only its 180 s cache.
    """

    jti = models.CharField(max_length=255, unique=True)
    expires_at = models.DateTimeField(db_index=True, help_text="When the token expires; purged after.")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return self.jti


class InvalidationEvent(models.Model):
    """The database leg of the invalidation bus: one row per message, kept a few minutes.

    Processes that cannot hear Redis pub/sub (embedded mode, Redis down) poll the recent rows
    every 0.25 s, so a revocation or an RBAC/JWKS invalidation reaches every process within a
    second without Redis. Written in the transaction of the change it announces.
    """

    kind = models.CharField(max_length=20)
    payload = models.JSONField(default=dict)
    origin = models.CharField(max_length=64)
    created_at = models.DateTimeField(db_index=True)

    class Meta:
        db_table = "gateway_invalidation_event"

    def __str__(self) -> str:
        return f"{self.kind} {self.payload}"
