"""The Django WSGI application: the APIs, admin and static files, without `/gw`.

The production server is ASGI (`python -m config.server`, config/asgi.py), which serves `/gw`
with the asyncio gateway (gateway/asgi.py) and runs this same Django application for the rest on
its bridge. This module stays for WSGI tooling: the gthread gunicorn baseline that
benchmarks/orders.py compares the production server with, and any WSGI host of the Django part.
"""

import os

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings.local")
application = get_wsgi_application()
