"""The project's Django application without config/wsgi.py's `/gw` dispatch: the gateway view
then runs behind Django's URL resolver and full middleware stack (benchmarks/gateway.py measures
what the lean WSGI entrance saves)."""

import os

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "benchmarks.settings")
application = get_wsgi_application()
