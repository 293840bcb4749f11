"""TEMPORARY `/gw` ASGI application: the existing WSGI gateway (`gateway_wsgi`) on a thread pool.

Replaced by the async pipeline (the pipeline area's `gateway/asgi.py`) at merge: this file only
lets config/asgi.py serve `/gw` on the ASGI server until then. It runs `gateway_wsgi` through
the same WSGI bridge as Django (config/server/wsgi_bridge.py), with the raw request target as
`RAW_URI`; the body is read by the gateway itself (after authentication), and a body the client
does not finish raises ValidationFailed in that read, so it is never forwarded as complete.
"""

from django.conf import settings

from common.errors import ValidationFailed
from config.server.wsgi_bridge import WsgiBridge
from gateway.views import gateway_wsgi

application = WsgiBridge(
    gateway_wsgi, threads=settings.WEB_THREADS, max_body=None, disconnect_error=ValidationFailed
)
