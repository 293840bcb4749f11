"""WSGI entry point: `/gw/…` goes to the gateway's lean handler, everything else to Django.

The proxy hop needs none of the middleware stack (sessions, CSRF, auth, messages…); skipping it
and the URL resolver is most of the gateway's speed (docs/gateway-proxy.md has the figures).
"""

import os

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings.local")
django_application = get_wsgi_application()

from gateway.views import GatewayDispatch  # noqa: E402  (needs the configured app)

application = GatewayDispatch(django_application)
