"""Django's own ASGIHandler (sync views on one thread per process), for benchmarks/orders.py's
`BENCH_SERVER=django-asgi`: what config/asgi.py's thread-pool WSGI bridge is measured against."""

from django.core.asgi import get_asgi_application

application = get_asgi_application()
