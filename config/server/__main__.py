"""`python -m config.server [--bind HOST:PORT] [--workers N] [--log-level L]`: the production server.

scripts/serve and tests/support/servers.py::server_command run this one command line. Defaults
come from the settings (`BIND`, `WEB_WORKERS`, `WEB_*`; config/settings/base.py lists them).
"""

from __future__ import annotations

import argparse
import os
import resource


def main() -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings.local")
    from django.conf import settings

    parser = argparse.ArgumentParser(prog="python -m config.server")
    parser.add_argument("--bind", default=settings.BIND)
    parser.add_argument("--workers", type=int, default=settings.WEB_WORKERS)
    parser.add_argument("--log-level", default=os.environ.get("LOG_LEVEL", "info").lower())
    parser.add_argument("--app", default="config.asgi:application", help="benchmarks only")
    args = parser.parse_args()
    from config.server.gc_tuning import parse_thresholds

    try:
        parse_thresholds(settings.WEB_GC_THRESHOLDS)  # applied per worker; refused here, early
    except ValueError as exc:
        parser.error(str(exc))

    # Thousands of connections per process need file descriptors: use the hard limit.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))

    import uvicorn
    from uvicorn.config import STARTUP_FAILURE

    from config.server.logconfig import log_config
    from config.server.protocol import GatehouseHttpProtocol
    from config.server.supervisor import Supervisor

    host, _, port = args.bind.rpartition(":")
    config = uvicorn.Config(
        args.app,
        host=host.strip("[]") or "127.0.0.1",
        port=int(port),
        workers=max(1, args.workers),
        loop="uvloop",
        http=GatehouseHttpProtocol,
        ws="none",
        lifespan="on",
        interface="asgi3",
        # The TCP peer stays scope["client"]: which peers' X-Forwarded-* to believe is the
        # gateway's decision (settings.FORWARDED_ALLOW_IPS), not the server's.
        proxy_headers=False,
        server_header=False,
        timeout_keep_alive=int(settings.WEB_KEEPALIVE_TIMEOUT),
        timeout_graceful_shutdown=settings.WEB_GRACEFUL_TIMEOUT,
        backlog=settings.WEB_BACKLOG,
        log_config=log_config(level=args.log_level, access_log=settings.ACCESS_LOG),
        log_level=args.log_level,
        access_log=settings.ACCESS_LOG,
    )
    sock = config.bind_socket()
    supervisor = Supervisor(config, sockets=[sock])
    supervisor.run()
    if any(process.exitcode == STARTUP_FAILURE for process in supervisor.processes):
        raise SystemExit(STARTUP_FAILURE)  # a worker could not start: say so to whoever started us


if __name__ == "__main__":
    main()
