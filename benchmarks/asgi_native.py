"""Django's own ASGIHandler (sync views on one thread per process), for benchmarks/orders.py's
`BENCH_SERVER=django-asgi`: what config/asgi.py's thread-pool WSGI bridge is measured against."""

from typing import Any

from django.core.asgi import get_asgi_application

_django = get_asgi_application()


async def application(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":  # Django has no lifespan support
        while (await receive())["type"] != "lifespan.shutdown":
            await send({"type": "lifespan.startup.complete"})
        await send({"type": "lifespan.shutdown.complete"})
        return
    await _django(scope, receive, send)
