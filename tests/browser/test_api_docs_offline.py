"""/api/docs renders Swagger UI from bundled assets: the operations list shows, and the page never
asks a host other than the server itself for anything (every other host is refused)."""

from __future__ import annotations

from urllib.parse import urlsplit

import pytest

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

LOCAL_HOSTS = {"127.0.0.1", "localhost", "[::1]", "::1"}


def test_api_docs_render_swagger_ui_offline(browser, gateway_process_factory, screenshot):
    base = gateway_process_factory()
    context = browser.new_context(viewport={"width": 1400, "height": 900}, base_url=base)
    page = context.new_page()
    page.set_default_timeout(15_000)
    outside: list[str] = []

    def refuse_other_hosts(route) -> None:  # noqa: ANN001
        host = urlsplit(route.request.url).hostname or ""
        if route.request.url.startswith(("data:", "blob:")) or host in LOCAL_HOSTS:
            route.continue_()
        else:
            outside.append(route.request.url)
            route.abort()

    context.route("**/*", refuse_other_hosts)
    try:
        response = page.goto("/api/docs", wait_until="networkidle")
        assert response is not None and response.status == 200

        page.wait_for_selector(".swagger-ui .opblock")
        paths = page.locator(".swagger-ui .opblock .opblock-summary-path").all_inner_texts()
        assert "/api/orders" in [path.replace("\u200b", "") for path in paths]
        assert page.locator(".swagger-ui .opblock").first.is_visible()
        assert "Gatehouse API" in page.inner_text(".swagger-ui .info .title")
        screenshot(page, "api-docs-offline", widths=(1400,))
    finally:
        context.close()

    assert outside == [], f"the docs page asked other hosts: {outside}"
