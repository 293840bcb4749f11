"""Settings shared by every environment. Values come from the environment (config.env)."""

from config.env import BASE_DIR, env

DEBUG = env.bool("DEBUG", default=False)
SECRET_KEY = env("SECRET_KEY", default="")
ALLOWED_HOSTS = env.list("ALLOWED_HOSTS", default=["localhost", "127.0.0.1", "[::1]"])
VAR_DIR = env.path("GATEHOUSE_VAR_DIR", default=str(BASE_DIR / "var"))

INSTALLED_APPS = [
    # Before django.contrib.admin: its templates (admin/base_site.html…) override the stock ones.
    "adminsite",
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "drf_spectacular",
    "drf_spectacular_sidecar",  # Swagger UI's files, served by whitenoise: /api/docs works offline
    "common",
    "gateway",
    "idempotency",
    "orders",
    "outbox",
    "sagas",
]

MIDDLEWARE = [
    # Correlation id first, so every later log line and error body carries it.
    "common.middleware.CorrelationIdMiddleware",
    # Trace context next: the request's span (export on) holds everything below it.
    "common.middleware.TraceMiddleware",
    "common.middleware.ProblemDetailsMiddleware",
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "config.urls"
WSGI_APPLICATION = "config.wsgi.application"
TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ]
        },
    }
]

# --- Database -------------------------------------------------------------------------------
DATABASES = {"default": env.db("DATABASE_URL", default=f"sqlite:///{BASE_DIR / 'db.sqlite3'}")}
if DATABASES["default"]["ENGINE"] == "django.db.backends.postgresql":
    # psycopg 3's pool: a connection per request costs more than the whole proxy hop.
    DATABASES["default"].setdefault("OPTIONS", {})
    if env.bool("DATABASE_POOL", default=True):
        DATABASES["default"]["OPTIONS"]["pool"] = {
            "min_size": env.int("DATABASE_POOL_MIN", default=1),
            "max_size": env.int("DATABASE_POOL_MAX", default=10),
            "timeout": 10,
        }
elif DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # WAL lets the web server, worker and beat share the embedded database.
    DATABASES["default"].setdefault("OPTIONS", {})
    DATABASES["default"]["OPTIONS"].update(
        {"timeout": 20, "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;"}
    )
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# --- Cache ----------------------------------------------------------------------------------
REDIS_URL = env("REDIS_URL", default="")
if REDIS_URL:
    CACHES = {
        "default": {
            "BACKEND": "django_redis.cache.RedisCache",
            "LOCATION": REDIS_URL,
            "OPTIONS": {
                # Fail fast: Redis down must never stall a request for long.
                "SOCKET_CONNECT_TIMEOUT": 0.25,
                "SOCKET_TIMEOUT": 0.25,
                "CONNECTION_POOL_KWARGS": {"max_connections": 100, "retry_on_timeout": False},
                # JSON, never pickle: a compromised Redis cannot run code here (not JSON = a miss).
                "SERIALIZER": "gateway.caching.serializers.JSONCacheSerializer",
            },
            "KEY_PREFIX": "",
            # Keys exactly as the SPEC names them (`routes:/a:GET`), so SCAN by kind finds them.
            "KEY_FUNCTION": "gateway.services.shared_cache.plain_cache_key",
        }
    }
else:
    CACHES = {
        "default": {
            "BACKEND": "django.core.cache.backends.locmem.LocMemCache",
            "KEY_FUNCTION": "gateway.services.shared_cache.plain_cache_key",
        }
    }

# --- Auth / i18n / static -------------------------------------------------------------------
AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
]
LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True
# Admin times to the second (orders live 15 minutes): adminsite/formats/en/formats.py.
FORMAT_MODULE_PATH = ["adminsite.formats"]
STATIC_URL = "static/"
# Set where `collectstatic` runs (the Docker image); otherwise whitenoise serves from the apps.
STATIC_ROOT = env("STATIC_ROOT", default=None)
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "whitenoise.storage.CompressedStaticFilesStorage"},
}
# Admin static is served by whitenoise straight from the apps in every environment.
WHITENOISE_USE_FINDERS = True
WHITENOISE_AUTOREFRESH = False
DATA_UPLOAD_MAX_MEMORY_SIZE = env.int("DATA_UPLOAD_MAX_MEMORY_SIZE", default=10 * 1024 * 1024)

# --- REST framework -------------------------------------------------------------------------
REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": ["gateway.authentication.BearerTokenAuthentication"],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
    # NUL, lone surrogates, invalid UTF-8 and deep nesting are a 400 in every API (common/parsers.py).
    "DEFAULT_PARSER_CLASSES": ["common.parsers.StrictJSONParser"],
    "DEFAULT_PAGINATION_CLASS": "common.pagination.StrictLimitOffsetPagination",
    "PAGE_SIZE": 50,
    "EXCEPTION_HANDLER": "common.exception_handler.problem_exception_handler",
    "DEFAULT_SCHEMA_CLASS": "common.schema.AutoSchema",
    "UNAUTHENTICATED_USER": None,
}
SPECTACULAR_SETTINGS = {
    "TITLE": "Gatehouse API",
    "DESCRIPTION": "API gateway and order flow. Request bodies are UTF-8 JSON (`application/json`) "
    "with no NUL character and no lone surrogate in any string or key, nested at most 32 levels "
    "deep; anything else is a 400 `malformed-request`. Every error is `application/problem+json` "
    "(RFC 9457, the `Problem` schema).",
    "VERSION": "1.0.0",
    "SERVE_INCLUDE_SCHEMA": False,
    # Swagger UI from the pinned drf-spectacular-sidecar package (static files), never a CDN.
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    # Every 4xx/5xx an operation documents is the shared problem+json component (common/schema.py).
    "POSTPROCESSING_HOOKS": [
        "drf_spectacular.hooks.postprocess_schema_enums",
        "common.schema.problem_responses_hook",
        "gateway.schema.internal_rules_hook",
    ],
}

# --- Errors ---------------------------------------------------------------------------------
PROBLEM_TYPE_BASE = env("PROBLEM_TYPE_BASE", default="https://gatehouse.dev/problems/")
# A rejected form post (admin) answers problem+json like every other error, not an HTML page.
CSRF_FAILURE_VIEW = "common.views.csrf_failure"

# --- First admin user (`manage.py ensure_admin`, run by scripts/run) ----------------------------
ADMIN_USERNAME = env("ADMIN_USERNAME", default="admin")
ADMIN_PASSWORD = env("ADMIN_PASSWORD", default="")  # empty: a random one is generated and printed

# --- Web server (config/server, scripts/serve) -------------------------------------------------
# Read once here; every server process uses these. Env names are the setting names.
BIND = env("BIND", default="127.0.0.1:8000")
WEB_WORKERS = env.int("WEB_WORKERS", default=2)
# Threads per process for the sync Django part (APIs, admin, static); /gw runs on the event loop.
WEB_THREADS = env.int("WEB_THREADS", default=16)
# A connection that has not sent a whole request head this many seconds after it opened (or,
# on a kept-alive connection, after the first byte of the next request) is answered 408 and closed.
WEB_HEADER_TIMEOUT = env.float("WEB_HEADER_TIMEOUT", default=10.0)
# Longest wait for the next piece of a request body (idle time per read; not while the app is
# not reading). Exceeded: 408 and closed; the app sees a disconnect, never a short body.
WEB_BODY_TIMEOUT = env.float("WEB_BODY_TIMEOUT", default=30.0)
# Idle keep-alive connection kept open this long: longer than common load balancers' 60 s,
# so they close first.
WEB_KEEPALIVE_TIMEOUT = env.float("WEB_KEEPALIVE_TIMEOUT", default=75.0)
WEB_MAX_REQUEST_LINE = env.int("WEB_MAX_REQUEST_LINE", default=8192)  # request target bytes → 414
WEB_MAX_HEADER_BYTES = env.int("WEB_MAX_HEADER_BYTES", default=32768)  # all header lines → 431
WEB_MAX_HEADERS = env.int("WEB_MAX_HEADERS", default=100)  # header fields → 431
# Open connections per process; above it a request is answered 503 + Retry-After at once.
WEB_MAX_CONNECTIONS = env.int("WEB_MAX_CONNECTIONS", default=10000)
WEB_BACKLOG = env.int("WEB_BACKLOG", default=4096)  # listen queue (capped by net.core.somaxconn)
# SIGTERM: stop accepting, let requests in flight finish for at most this long.
WEB_GRACEFUL_TIMEOUT = env.int("WEB_GRACEFUL_TIMEOUT", default=20)
# The cyclic garbage collector's thresholds in each web worker ("gen0,gen1,gen2"; empty: CPython's
# 700,10,10), applied with gc.freeze() once the worker has started (config/server/gc_tuning.py).
WEB_GC_THRESHOLDS = env.str("WEB_GC_THRESHOLDS", default="50000,20,100")
# Largest body buffered for Django (APIs, admin): larger → 413. Chunked bodies are buffered
# and handed to Django with a Content-Length.
WEB_MAX_BODY_BYTES = env.int("WEB_MAX_BODY_BYTES", default=DATA_UPLOAD_MAX_MEMORY_SIZE)
ACCESS_LOG = env.bool("ACCESS_LOG", default=False)
# Peers whose X-Forwarded-* headers may be believed (CIDR list, default none: the gateway is the
# edge). The server itself never rewrites scope["client"] or the scheme from those headers.
FORWARDED_ALLOW_IPS = env.list("FORWARDED_ALLOW_IPS", default=[])

# --- Gateway --------------------------------------------------------------------------------
GATEWAY_PREFIX = "/gw"
# Peers whose X-Forwarded-For is believed (CIDR list; empty: nobody's), for the client address
# that IP rules and per-address rate limits use (docs/gateway-policies.md).
FORWARDED_ALLOW_IPS = env.list("FORWARDED_ALLOW_IPS", default=[])
# The global default policies (JSON object, the keys of Route.policies); a route's own policy of
# a kind replaces the default of that kind, `{"kind": null}` drops it.
GATEWAY_DEFAULT_POLICIES = env.json("GATEWAY_DEFAULT_POLICIES", default={})
GATEWAY_ROUTE_CACHE_TTL = env.int("GATEWAY_ROUTE_CACHE_TTL", default=300)
GATEWAY_MAX_BODY_BYTES = env.int("GATEWAY_MAX_BODY_BYTES", default=10 * 1024 * 1024)
# Threads per process for the asyncio gateway's database work (route misses, idempotency).
GATEWAY_DB_THREADS = env.int("GATEWAY_DB_THREADS", default=8)
# Largest upstream body kept by the GET response cache (larger ones stream through uncached).
GATEWAY_RESPONSE_CACHE_MAX_BYTES = env.int("GATEWAY_RESPONSE_CACHE_MAX_BYTES", default=1024 * 1024)
GATEWAY_CIRCUIT_FAILURES = env.int("GATEWAY_CIRCUIT_FAILURES", default=5)
GATEWAY_CIRCUIT_RESET_SECONDS = env.float("GATEWAY_CIRCUIT_RESET_SECONDS", default=30.0)
# The async upstream client (gateway/services/upstream.py): connections per target and event loop
# (0: unbounded; above the limit a request waits for a free one, within its time budget), and how
# long an idle keep-alive connection is kept.
GATEWAY_UPSTREAM_POOL_SIZE = env.int("GATEWAY_UPSTREAM_POOL_SIZE", default=1024)
GATEWAY_UPSTREAM_KEEPALIVE_SECONDS = env.float("GATEWAY_UPSTREAM_KEEPALIVE_SECONDS", default=15.0)
JWT_JWKS_URL = env("JWT_JWKS_URL", default="")
JWT_ISSUER = env("JWT_ISSUER", default="")
JWT_AUDIENCE = env("JWT_AUDIENCE", default="")
JWT_LEEWAY_SECONDS = env.int("JWT_LEEWAY_SECONDS", default=60)
# Longest token lifetime accepted: a token whose exp is further away (beyond the leeway) is refused,
# and a revocation known only by its jti is kept this long, so it always outlives the token.
JWT_MAX_TOKEN_LIFETIME_SECONDS = env.int("JWT_MAX_TOKEN_LIFETIME_SECONDS", default=24 * 3600)
# The development signing key (manage.py dev_token, VAR_DIR/dev_jwt_key.pem) is trusted only without
# JWT_JWKS_URL, and only when enabled: by default in embedded mode (no DATABASE_URL), never silently
# in a deployment on PostgreSQL (docs/gateway-auth.md).
JWT_DEV_KEY_ENABLED = env.bool(
    "JWT_DEV_KEY_ENABLED", default=env("DATABASE_URL", default="sqlite:").startswith("sqlite:")
)
JWT_JWKS_REFETCH_COOLDOWN_SECONDS = env.int("JWT_JWKS_REFETCH_COOLDOWN_SECONDS", default=30)
TOKEN_INTROSPECT_URL = env("TOKEN_INTROSPECT_URL", default="")
# The gateway's client credentials at the introspection endpoint (RFC 7662 §2.1: HTTP Basic);
# empty ID: no client authentication is sent.
TOKEN_INTROSPECT_CLIENT_ID = env("TOKEN_INTROSPECT_CLIENT_ID", default="")
TOKEN_INTROSPECT_CLIENT_SECRET = env("TOKEN_INTROSPECT_CLIENT_SECRET", default="")
RBAC_RESOLVER_URL = env("RBAC_RESOLVER_URL", default="")
GATEWAY_INTERNAL_TOKEN = env("GATEWAY_INTERNAL_TOKEN", default="")

# --- Idempotency ----------------------------------------------------------------------------
IDEMPOTENCY_TTL_HOURS = env.int("IDEMPOTENCY_TTL_HOURS", default=24)
IDEMPOTENCY_LOCK_TIMEOUT_SECONDS = env.int("IDEMPOTENCY_LOCK_TIMEOUT_SECONDS", default=60)
IDEMPOTENCY_MISMATCH_STATUS = env.int("IDEMPOTENCY_MISMATCH_STATUS", default=409)
# Largest response body kept for replay; a larger one is streamed through, never re-executed.
IDEMPOTENCY_MAX_RESPONSE_BYTES = env.int("IDEMPOTENCY_MAX_RESPONSE_BYTES", default=1024 * 1024)
# Durable by default: a claim lost in a database crash would let a retry execute twice.
# false lets record-only writes skip the WAL flush wait (docs/idempotency.md).
IDEMPOTENCY_DURABLE_COMMIT = env.bool("IDEMPOTENCY_DURABLE_COMMIT", default=True)

# --- Orders ---------------------------------------------------------------------------------
ORDER_SESSION_DURATION_MINUTES = env.int("ORDER_SESSION_DURATION_MINUTES", default=15)
ORDER_EXPIRY_INTERVAL_SECONDS = env.int("ORDER_EXPIRY_INTERVAL_SECONDS", default=30)
PAYMENT_WEBHOOK_SECRET = env("PAYMENT_WEBHOOK_SECRET", default="")
PAYMENT_EVENTS_BROKER_URL = env("PAYMENT_EVENTS_BROKER_URL", default="")
PAYMENT_EVENTS_QUEUE = env("PAYMENT_EVENTS_QUEUE", default="payment-events")
PROCESSED_EVENTS_RETENTION_DAYS = env.int("PROCESSED_EVENTS_RETENTION_DAYS", default=30)

# --- Outbox ---------------------------------------------------------------------------------
OUTBOX_PUBLISHER = env("OUTBOX_PUBLISHER", default="log")
OUTBOX_BROKER_URL = env("OUTBOX_BROKER_URL", default="")
OUTBOX_EXCHANGE = env("OUTBOX_EXCHANGE", default="events")
OUTBOX_WEBHOOK_URL = env("OUTBOX_WEBHOOK_URL", default="")
OUTBOX_WEBHOOK_SECRET = env("OUTBOX_WEBHOOK_SECRET", default="")
OUTBOX_MAX_ATTEMPTS = env.int("OUTBOX_MAX_ATTEMPTS", default=5)
# Sagas (SPEC §8): the gateway Service holding stock (unset → inventory steps skipped), attempts
# per step before the saga compensates, backoff between attempts (full jitter), sweep interval.
INVENTORY_SERVICE = env("INVENTORY_SERVICE", default="")
SAGA_STEP_MAX_ATTEMPTS = env.int("SAGA_STEP_MAX_ATTEMPTS", default=5)
SAGA_BACKOFF_BASE_SECONDS = env.float("SAGA_BACKOFF_BASE_SECONDS", default=1.0)
SAGA_BACKOFF_CAP_SECONDS = env.float("SAGA_BACKOFF_CAP_SECONDS", default=60.0)
SAGA_STEP_LEASE_SECONDS = env.float("SAGA_STEP_LEASE_SECONDS", default=30.0)
# The orchestrator's own bookkeeping (claims, backoffs, steps that leave the saga running)
# commits without waiting for the WAL flush; see sagas/services.py `_commit_without_flush`.
SAGA_ASYNC_COMMIT = env.bool("SAGA_ASYNC_COMMIT", default=True)
OUTBOX_BATCH_SIZE = env.int("OUTBOX_BATCH_SIZE", default=500)
OUTBOX_LEASE_SECONDS = env.int("OUTBOX_LEASE_SECONDS", default=60)
OUTBOX_RETENTION_DAYS = env.int("OUTBOX_RETENTION_DAYS", default=7)
OUTBOX_RELAY_INTERVAL_SECONDS = env.int("OUTBOX_RELAY_INTERVAL_SECONDS", default=5)

# --- Staff dashboard (adminsite) -----------------------------------------------------------
# How often each process writes its request counts and circuit states to the shared store.
DASHBOARD_FLUSH_SECONDS = env.float("DASHBOARD_FLUSH_SECONDS", default=2.0)
# "Expiring soon" on the dashboard: pending orders due within this many minutes.
DASHBOARD_EXPIRING_MINUTES = env.int("DASHBOARD_EXPIRING_MINUTES", default=5)

# --- Logging: JSON lines carrying the correlation id ----------------------------------------
LOG_LEVEL = env("LOG_LEVEL", default="INFO")
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "filters": {
        "correlation": {"()": "common.logging.CorrelationIdFilter"},
        "task": {"()": "common.logging.TaskFilter"},
        "quiet_ticks": {"()": "common.logging.QuietTicksFilter"},
    },
    "formatters": {"json": {"()": "common.logging.JsonFormatter"}},
    "handlers": {
        "console": {
            "class": "logging.StreamHandler",
            "formatter": "json",
            "filters": ["correlation", "task", "quiet_ticks"],
        }
    },
    "root": {"handlers": ["console"], "level": LOG_LEVEL},
    "loggers": {
        "django.request": {"level": "ERROR", "propagate": True},
        "django.server": {"level": "WARNING", "propagate": True},
    },
}

from config.settings.celery import *  # noqa: E402,F401,F403
