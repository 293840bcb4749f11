"""The project's URLs plus the contenders the gateway is compared with (same server, same stack)."""

from django.http import HttpRequest, HttpResponse
from django.urls import include, re_path

from config.urls import handler404, handler500  # noqa: F401
from config.urls import urlpatterns as project_urlpatterns


def minimal_view(request: HttpRequest) -> HttpResponse:
    """What any Django view costs at least: the full middleware stack and URL resolution."""
    return HttpResponse(b"hello", content_type="text/plain")


def _revproxy_patterns() -> list:
    # django-revproxy is installed for the benchmark only (benchmarks/gateway.py puts it on the path).
    import os

    from revproxy.views import ProxyView

    upstream = os.environ["BENCH_UPSTREAM_URL"]
    return [re_path(r"^bench/revproxy/(?P<path>.*)$", ProxyView.as_view(upstream=upstream + "/"))]


urlpatterns = [
    re_path(r"^bench/minimal$", minimal_view),
    *_revproxy_patterns(),
    re_path(r"^", include(project_urlpatterns)),
]
