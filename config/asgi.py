"""The ASGI entrance (what `python -m config.server` serves): Host check, then `/gw` or Django.

For every HTTP request, in this order:
1. the Host check (config/server/hostcheck.py): a Host not in `ALLOWED_HOSTS`, a bad port, two
   Host headers or none on HTTP/1.1 → 400 problem+json, before any app runs — `/gw` included;
2. `/gw` and `/gw/…` (by the raw path) → `gateway.asgi.application`, the async gateway;
3. everything else → Django (APIs, admin, static files through whitenoise, /healthz, /readyz,
   /metrics, /api/docs) through the WSGI bridge (config/server/wsgi_bridge.py: `WEB_THREADS`
   threads, the body buffered whole with a Content-Length, at most `WEB_MAX_BODY_BYTES`).

Contract with `gateway.asgi.application` (ASGI 3): it receives the http scope as the server
made it — `raw_path` and `query_string` are the bytes the client sent (never decoded or
re-encoded), `path` is the percent-decoded path, `client` the TCP peer (no proxy-header rewrite;
settings.FORWARDED_ALLOW_IPS says whose X-Forwarded-* to believe), `headers` with exactly one,
allowed `Host` (the authority of an absolute-form target if there was one) — and the server's
`receive`/`send`: the body is not read for it; `receive()` gives `http.disconnect` when the client
goes away, also when the body was cut short (truncated Content-Length, malformed or aborted
chunked body, body timeout), so a body is complete only when `more_body` is False. It must
answer every error itself as problem+json; anything escaping it is logged and answered 500
problem+json here (if no response started). It gets the `lifespan` scope too (startup/shutdown
forwarded; an app without lifespan support is fine).
"""

from __future__ import annotations

import logging
import os
from typing import Any

from django.core.exceptions import ImproperlyConfigured
from django.core.wsgi import get_wsgi_application
from uvicorn.config import STARTUP_FAILURE

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings.local")
try:
    _django_wsgi = get_wsgi_application()
except ImproperlyConfigured as exc:
    # Bad configuration (e.g. GATEWAY_DEFAULT_POLICIES) fails the same way on every restart: the
    # worker exits as "failed to start", so the server stops instead of restarting it forever.
    logging.getLogger("gatehouse.server").critical("configuration error: %s", exc)
    raise SystemExit(STARTUP_FAILURE) from exc

from django.conf import settings  # noqa: E402

from common import telemetry  # noqa: E402
from config.server.gc_tuning import gc_tune  # noqa: E402
from config.server.hostcheck import host_problem  # noqa: E402
from config.server.lifespan import MountedLifespan  # noqa: E402
from config.server.problems import problem_parts  # noqa: E402
from config.server.wsgi_bridge import WsgiBridge  # noqa: E402
from gateway.asgi import application as gateway_application  # noqa: E402

logger = logging.getLogger("gatehouse.server")


async def _send_problem(send: Any, status: int, detail: str) -> None:
    headers, body = problem_parts(status, detail)
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class Entrance:
    def __init__(self, *, gateway: Any, django: WsgiBridge) -> None:
        self.gateway = gateway
        self.django = django
        prefix = settings.GATEWAY_PREFIX.encode()
        self.prefix, self.prefix_slash = prefix, prefix + b"/"
        self.gateway_lifespan = MountedLifespan(gateway, "gateway.asgi")

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        kind = scope["type"]
        if kind == "http":
            await self.http(scope, receive, send)
        elif kind == "lifespan":
            await self.lifespan(scope, receive, send)
        # websocket: the server runs with ws="none", so none arrives

    async def http(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        problem = host_problem(scope)
        if problem is not None:
            await _send_problem(send, 400, problem)
            return
        raw_path = scope["raw_path"]
        if raw_path.startswith(self.prefix_slash) or raw_path == self.prefix:
            await self._gateway_http(scope, receive, send)
            return
        app = self.django
        started = False

        async def tracking_send(message: dict[str, Any]) -> None:
            nonlocal started
            started = True
            await send(message)

        try:
            await app(scope, receive, tracking_send)
        except Exception:
            logger.exception("unhandled error on %s %s", scope["method"], scope["path"])
            if not started:
                await _send_problem(send, 500, "An unexpected error occurred.")
            else:
                raise  # the server closes the connection: a half-sent answer cannot be fixed

    async def _gateway_http(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        """The gateway answers its own errors; this is the net under it, without wrapping `send`
        (on the hot path): if the answer had begun, the 500's head is refused (RuntimeError) and
        the original error goes on to the server, which closes the connection."""
        try:
            await self.gateway(scope, receive, send)
        except Exception as exc:
            logger.exception("unhandled error on %s %s", scope["method"], scope["path"])
            try:
                await _send_problem(send, 500, "An unexpected error occurred.")
            except RuntimeError:  # the answer had begun: it cannot be fixed, the server closes
                raise exc from None

    async def lifespan(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        await receive()  # lifespan.startup
        telemetry.init()  # per worker process, after the fork/spawn (a no-op unless configured)
        try:
            await self.gateway_lifespan.startup(scope)
        except Exception as exc:
            await send({"type": "lifespan.startup.failed", "message": str(exc)})
            return
        gc_tune(settings.WEB_GC_THRESHOLDS)  # what start-up made is long-lived: never scanned again
        await send({"type": "lifespan.startup.complete"})
        await receive()  # lifespan.shutdown
        await self.gateway_lifespan.shutdown()
        self.django.close()
        telemetry.shutdown()  # flush the spans still buffered
        await send({"type": "lifespan.shutdown.complete"})


application = Entrance(
    gateway=gateway_application,
    django=WsgiBridge(_django_wsgi, threads=settings.WEB_THREADS, max_body=settings.WEB_MAX_BODY_BYTES),
)
