"""A URLconf with the project's routes plus views and a middleware that fail on purpose.

Used with `@pytest.mark.urls("tests.common.faults")`; the error handlers (handler404 …) come
along from config.urls, so Django answers errors exactly as in the real URLconf.
"""

from collections.abc import Callable

from django.http import HttpRequest, HttpResponse
from django.urls import path

from config.urls import *  # noqa: F403  (urlpatterns and handler400/403/404/500)
from config.urls import urlpatterns as project_urlpatterns


class Boom(RuntimeError):
    pass


def boom_view(request: HttpRequest) -> HttpResponse:
    raise Boom("a plain Django view failed (secret detail that must not leak)")


class ExplodingMiddleware:
    """Fails inside the middleware stack (outside any view) for /boom-in-middleware."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        if request.path == "/boom-in-middleware":
            raise Boom("a middleware failed (secret detail that must not leak)")
        return self.get_response(request)


urlpatterns = [path("boom", boom_view), *project_urlpatterns]
