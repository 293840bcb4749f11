"""The web server layer: uvicorn (httptools, uvloop) with the project's own HTTP protocol.

`python -m config.server` (what scripts/serve runs) starts `WEB_WORKERS` processes on `BIND`
serving config.asgi:application. Files: `protocol.py` (timeouts, limits, connection cap,
server-level errors as problem+json), `problems.py` (those answers), `supervisor.py` (worker
processes, SIGTERM drain, Prometheus multiprocess clean-up), `logconfig.py` (JSON log lines),
`__main__.py` (the command line). docs/gateway-proxy.md, "Server", has the choice and figures.
"""
