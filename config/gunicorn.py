"""gunicorn settings of the previous production server, kept as the BASELINE for benchmarks only.

Production runs `python -m config.server` (uvicorn, config/server/); benchmarks/orders.py
(`--servers asgi,gunicorn`) starts gunicorn with this file to compare the Django APIs (gunicorn
is in requirements-dev.txt for that). It serves config/wsgi.py, which has no `/gw`: the gateway
exists only on the ASGI entrance. Not used otherwise.

gthread workers: the proxy blocks on upstream sockets, so each worker serves many requests at
once with threads while the worker count spreads the CPU work over the cores. The choice and the
figures behind it are in docs/gateway-proxy.md. Environment knobs: BIND, WEB_WORKERS,
WEB_THREADS, FORWARDED_ALLOW_IPS, ACCESS_LOG.
"""

import os

bind = os.environ.get("BIND", "127.0.0.1:8000")
workers = int(os.environ.get("WEB_WORKERS", "2"))
worker_class = "gthread"
threads = int(os.environ.get("WEB_THREADS", "16"))
keepalive = 75  # longer than common load balancers' idle timeout, so they close first
graceful_timeout = 20
# X-Forwarded-Proto & co. are believed only from these peers (none by default: the gateway is
# the edge). Behind a load balancer set FORWARDED_ALLOW_IPS to its address.
forwarded_allow_ips = os.environ.get("FORWARDED_ALLOW_IPS", "") or "0.0.0.0/32"
accesslog = "-" if os.environ.get("ACCESS_LOG", "") == "1" else None
loglevel = os.environ.get("LOG_LEVEL", "info").lower()
# The server's own lines are JSON too; an access line carries the correlation id the response
# was sent with (the request's context is gone by the time gunicorn writes it).
access_log_format = '%(h)s "%(r)s" %(s)s %(B)s %(M)sms correlation_id=%({x-correlation-id}o)s'
logconfig_dict = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"json": {"()": "common.logging.JsonFormatter"}},
    "filters": {"correlation": {"()": "common.logging.CorrelationIdFilter"}},
    "handlers": {
        "json": {
            "class": "logging.StreamHandler",
            "formatter": "json",
            "filters": ["correlation"],
            "stream": "ext://sys.stderr",
        }
    },
    "root": {"handlers": ["json"], "level": "WARNING"},  # Django's LOGGING takes over in the app
    "loggers": {
        "gunicorn.error": {"handlers": ["json"], "level": loglevel.upper(), "propagate": False},
        # gunicorn writes access lines whenever a logging config is given: the level keeps
        # them off unless ACCESS_LOG=1 (a line per request is a cost on the hot path).
        "gunicorn.access": {
            "handlers": ["json"],
            "level": "INFO" if accesslog else "WARNING",
            "propagate": False,
        },
    },
}
preload_app = False  # each worker imports the app itself: prometheus multiprocess files per pid


def child_exit(server, worker):  # noqa: ANN001
    """A dead worker's live gauges must not haunt /metrics (its counters stay summed)."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(worker.pid)
