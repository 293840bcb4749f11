"""The Celery app; tasks carry the correlation id of the request that enqueued them."""

import os

from celery import Celery, signals

from config import broker

broker.register()  # filesystem:// is the atomic transport (config/broker.py), in every process
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings.local")

app = Celery("gatehouse")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()


@signals.before_task_publish.connect
def _attach_correlation_id(headers: dict | None = None, **_: object) -> None:
    from common.correlation import get_correlation_id

    if headers is not None and get_correlation_id():
        headers.setdefault("correlation_id", get_correlation_id())


@signals.celeryd_init.connect  # before the worker's first warning (running as root…)
@signals.setup_logging.connect
def _project_logging(**_: object) -> None:
    """Worker and beat log through settings.LOGGING (JSON lines, correlation id, task name and
    id), not Celery's text format: connecting setup_logging stops Celery configuring logging."""
    import logging.config

    from django.conf import settings

    logging.config.dictConfig(settings.LOGGING)
    logging.captureWarnings(True)  # e.g. Celery's SecurityWarning, as a JSON line too


@signals.worker_ready.connect
def _log_warm_shutdown(sender=None, **_: object) -> None:  # type: ignore[no-untyped-def]
    """Celery prints "worker: Warm shutdown (MainProcess)" as plain text on SIGTERM; the same
    handler (celery 5.7's `_shutdown_handler`, pinned) without the print, and a JSON line instead."""
    import logging

    from celery.apps.worker import _shutdown_handler

    worker = getattr(sender, "controller", None)
    if worker is None:
        return
    _shutdown_handler(
        worker,
        sig="SIGTERM",
        how="Warm",
        verbose=False,
        callback=lambda _worker: logging.getLogger("gatehouse.worker").info("warm shutdown (SIGTERM)"),
    )


@signals.task_prerun.connect
def _restore_correlation_id(task=None, **_: object) -> None:  # type: ignore[no-untyped-def]
    from common.correlation import new_correlation_id, set_correlation_id

    incoming = getattr(task.request, "correlation_id", None) if task else None
    set_correlation_id(incoming or new_correlation_id())


# --- OpenTelemetry (common/telemetry.py): on only with OTEL_EXPORTER_OTLP_ENDPOINT -------------
# Started in each pool process after the fork (worker_process_init), or in the worker itself for
# the solo/threads pools; one CONSUMER span per task run, continuing the traceparent of whoever
# enqueued it (a request, an order event).


@signals.worker_process_init.connect
def _telemetry_process_init(**_: object) -> None:
    from common import telemetry

    telemetry.init()


@signals.worker_init.connect
def _telemetry_worker_init(sender=None, **_: object) -> None:  # type: ignore[no-untyped-def]
    from celery.concurrency import get_implementation

    pool = getattr(sender, "pool_cls", None)
    if pool is None:
        return
    if get_implementation(pool).__module__ != "celery.concurrency.prefork":  # no fork follows
        from common import telemetry

        telemetry.init()


@signals.worker_process_shutdown.connect
@signals.worker_shutdown.connect
def _telemetry_shutdown(**_: object) -> None:
    from common import telemetry

    telemetry.shutdown()


@signals.before_task_publish.connect
def _attach_traceparent(headers: dict | None = None, **_: object) -> None:
    from common import telemetry

    # The current span's traceparent, or with export off the request's trace context: the
    # task's log lines then carry the trace id of the work that enqueued it.
    if headers is not None:
        current = telemetry.carried_traceparent()
        if current:
            headers.setdefault("traceparent", current)


def _header(request, name: str) -> str | None:  # type: ignore[no-untyped-def]
    """A custom message header: a request attribute in a worker, in `headers` when run eagerly."""
    return getattr(request, name, None) or (getattr(request, "headers", None) or {}).get(name)


@signals.task_prerun.connect
def _task_span_start(task=None, **_: object) -> None:  # type: ignore[no-untyped-def]
    from common import telemetry

    if task is None:
        return
    parent = _header(task.request, "traceparent")
    if not telemetry.enabled() and not parent:
        return
    span = telemetry.span(
        f"celery.task {task.name}",
        kind="consumer",
        parent_traceparent=parent,
        attributes={"celery.task_name": task.name, "celery.task_id": task.request.id or ""},
    )
    span.__enter__()
    task.request.telemetry_span = span


@signals.task_failure.connect
def _task_span_failure(sender=None, exception=None, **_: object) -> None:  # type: ignore[no-untyped-def]
    span = getattr(getattr(sender, "request", None), "telemetry_span", None)
    if span is not None and exception is not None:
        span.record_exception(exception)
        span.set_error(type(exception).__name__)


@signals.task_postrun.connect
def _task_span_end(task=None, state=None, **_: object) -> None:  # type: ignore[no-untyped-def]
    span = getattr(getattr(task, "request", None), "telemetry_span", None)
    if span is None:
        return
    task.request.telemetry_span = None
    if state:
        span.set_attribute("celery.state", str(state))
    span.__exit__(None, None, None)


# --- Single-beat guard ------------------------------------------------------------------------
# Two beat processes (a rolling deploy, a second replica started by mistake) would both schedule
# every entry. The tasks are idempotent, so that is wasteful rather than wrong, but the guard keeps
# it to one: a beat only schedules while it holds a lock, checked on every tick. The lock lives
# where the schedule's work lives, never in a cache: on PostgreSQL a session-level advisory lock
# on a dedicated connection (released by the server when the holder's connection dies), on SQLite
# (embedded default) an exclusive flock on a file in the var directory (released by the kernel).
# So a Redis outage no longer stops the expiry sweep, relay ticks and purges. `RedisBeatLock`
# stays for an explicit BEAT_LOCK_REDIS_URL (several machines without a shared PostgreSQL).

import fcntl  # noqa: E402
import logging  # noqa: E402
import os as _os  # noqa: E402
import uuid  # noqa: E402

from celery.beat import Scheduler  # noqa: E402

logger = logging.getLogger("gatehouse.beat")

_RENEW_SCRIPT = """
if redis.call('get', KEYS[1]) == ARGV[1] then
  return redis.call('pexpire', KEYS[1], ARGV[2])
end
return redis.call('set', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) and 1 or 0
"""
_RELEASE_SCRIPT = """
if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end
return 0
"""


class RedisBeatLock:
    """A lease in Redis: SET NX PX to take it, a compare-and-renew script to keep it."""

    def __init__(self, url: str, key: str, ttl_seconds: float) -> None:
        import redis

        self.client = redis.Redis.from_url(url, socket_timeout=2, socket_connect_timeout=2)
        self.key, self.ttl_ms = key, int(ttl_seconds * 1000)
        self.token = uuid.uuid4().hex

    def acquire(self) -> bool:
        """Take or renew the lock; False when another beat holds it (or Redis is unreachable)."""
        try:
            return bool(self.client.eval(_RENEW_SCRIPT, 1, self.key, self.token, self.ttl_ms))
        except Exception as exc:  # cannot prove leadership: do not schedule
            logger.warning("beat lock unavailable: %s", exc)
            return False

    def release(self) -> None:
        try:
            self.client.eval(_RELEASE_SCRIPT, 1, self.key, self.token)
        except Exception:
            logger.debug("beat lock release failed", exc_info=True)


class FileBeatLock:
    """An exclusive non-blocking flock: one beat per machine, freed when its process dies."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._fd: int | None = None

    def acquire(self) -> bool:
        if self._fd is not None:
            return True
        _os.makedirs(_os.path.dirname(self.path) or ".", exist_ok=True)
        fd = _os.open(self.path, _os.O_RDWR | _os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            _os.close(fd)
            return False
        self._fd = fd
        return True

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            _os.close(self._fd)
            self._fd = None


class PostgresAdvisoryBeatLock:
    """`pg_try_advisory_lock` on a dedicated autocommit connection (not Django's, which is closed
    between tasks): held for the session, freed by PostgreSQL when the holder's connection dies.
    Every acquire() on a held lock checks that its connection is still alive."""

    def __init__(self, connect_kwargs: dict, key: int) -> None:
        self.connect_kwargs, self.key = connect_kwargs, key
        self._conn = None

    def acquire(self) -> bool:
        import psycopg

        try:
            if self._conn is not None:
                self._conn.execute("SELECT 1")
                return True
            conn = psycopg.connect(autocommit=True, connect_timeout=2, **self.connect_kwargs)
            taken = conn.execute("SELECT pg_try_advisory_lock(%s)", (self.key,)).fetchone()[0]
        except Exception as exc:  # cannot prove leadership: do not schedule
            logger.warning("beat lock unavailable: %s", exc)
            self._close()
            return False
        if not taken:
            conn.close()
            return False
        self._conn = conn
        return True

    def release(self) -> None:
        if self._conn is not None:
            try:
                self._conn.execute("SELECT pg_advisory_unlock(%s)", (self.key,))
            except Exception:
                logger.debug("beat lock release failed", exc_info=True)
            self._close()

    def _close(self) -> None:
        if self._conn is not None:
            try:
                self._conn.close()
            except Exception:
                logger.debug("beat lock connection close failed", exc_info=True)
            self._conn = None


def _postgres_connect_kwargs(database: dict) -> dict:
    kwargs = {
        "dbname": database["NAME"],
        "user": database.get("USER") or None,
        "password": database.get("PASSWORD") or None,
        "host": database.get("HOST") or None,
        "port": database.get("PORT") or None,
    }
    return {name: value for name, value in kwargs.items() if value is not None}


def beat_lock_from_settings() -> RedisBeatLock | FileBeatLock | PostgresAdvisoryBeatLock:
    from django.conf import settings

    if settings.BEAT_LOCK_REDIS_URL:
        return RedisBeatLock(
            settings.BEAT_LOCK_REDIS_URL, settings.BEAT_LOCK_KEY, settings.BEAT_LOCK_TTL_SECONDS
        )
    database = settings.DATABASES["default"]
    if "postgresql" in database["ENGINE"]:
        return PostgresAdvisoryBeatLock(_postgres_connect_kwargs(database), settings.BEAT_LOCK_ADVISORY_KEY)
    return FileBeatLock(settings.BEAT_LOCK_FILE)


class GuardedScheduler(Scheduler):
    """celery beat's in-memory scheduler, scheduling only while this beat holds the beat lock.

    In-memory (not the shelve-backed PersistentScheduler): two beats must not share one shelve
    file, and forgetting last-run times on restart only runs the idempotent tasks once early.
    """

    def __init__(
        self,
        *args: object,
        lock: RedisBeatLock | FileBeatLock | PostgresAdvisoryBeatLock | None = None,
        **kwargs: object,
    ) -> None:
        self.lock = lock or beat_lock_from_settings()
        self.is_leader = False
        super().__init__(*args, **kwargs)

    def tick(self, *args: object, **kwargs: object) -> float:
        from django.conf import settings

        holds = self.lock.acquire()
        if holds != self.is_leader:
            logger.warning("beat %s the schedule lock", "took" if holds else "lost")
            self.is_leader = holds
        if not holds:
            return min(self.max_interval, settings.BEAT_LOCK_TTL_SECONDS / 3)
        return min(super().tick(*args, **kwargs), settings.BEAT_LOCK_TTL_SECONDS / 3)

    def close(self) -> None:
        super().close()
        self.lock.release()
