"""What staff do in admin, in headless Chromium against the production server (issue 12 item 7)."""

from __future__ import annotations

import re
import time
from datetime import timedelta

import pytest
import requests
from django.apps import apps

from orders.models import Order, OrderStatus
from outbox.models import OutboxEvent
from tests.gateway.proxy_support import proxy_route
from tests.orders.factories import OrderFactory
from tests.outbox.factories import OutboxEventFactory
from tests.support.servers import Reply

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


def run_action(page, object_id: object, action: str) -> str:  # noqa: ANN001
    """Tick one row of a changelist, run `action` with Go; returns the messages shown."""
    page.check(f"input[name=_selected_action][value='{object_id}']")
    page.select_option("select[name=action]", action)
    page.click("button[name=index]")
    page.wait_for_selector("ul.messagelist")
    return page.inner_text("ul.messagelist")


def wait_for_status(url: str, status: int, seconds: float = 5.0) -> requests.Response:
    deadline = time.monotonic() + seconds
    while True:
        response = requests.get(url, timeout=5)
        if response.status_code == status or time.monotonic() > deadline:
            return response
        time.sleep(0.05)


def test_staff_logs_in_and_a_route_added_in_admin_serves_through_gw(
    staff_page, http_server_factory, screenshot
):
    page, base = staff_page
    upstream = http_server_factory(lambda request: Reply(200, f"upstream saw {request.path}".encode()))
    assert page.inner_text("#site-name") == "Gatehouse"
    assert page.title() == "Routes, orders and events | Gatehouse admin"

    # a service with the upstream as its target
    page.goto("/admin/gateway/service/add/")
    page.fill("#id_name", "catalog.browser")
    page.fill("#id_targets-0-url", upstream.url)
    page.click("input[name=_save]")
    page.wait_for_selector("ul.messagelist >> text=was added successfully")

    # a public route to it
    page.goto("/admin/gateway/route/add/")
    page.check("input[name=methods][value=GET]")
    page.fill("#id_path", "/catalog/{item}")
    page.click("#id_service + .select2 .select2-selection")
    page.fill(".select2-search__field", "catalog")
    page.click(".select2-results__option >> text=catalog.browser")
    page.uncheck("#id_auth_required")
    page.click("input[name=_save]")
    page.wait_for_selector("ul.messagelist >> text=was added successfully")

    response = wait_for_status(f"{base}/gw/catalog/42", 200, seconds=2.0)
    assert (response.status_code, response.text) == (200, "upstream saw /catalog/42")

    proxy_route(upstream.url, path="/tenants/{tenant_id}/users/{user_id}/orders/{order_id}/items/**")
    page.goto("/admin/gateway/route/")
    assert page.locator("#result_list tbody tr").count() == 2
    screenshot(page, "routes-list")
    right_edge = page.evaluate("document.querySelector('#result_list').getBoundingClientRect().right")
    assert right_edge <= 1400, "the routes list must fit a 1 400 px window"


def test_staff_expires_and_extends_orders_with_admin_actions(staff_page, screenshot):
    page, _ = staff_page
    to_expire = OrderFactory()
    to_extend = OrderFactory()
    deadline = to_extend.expiration_time

    page.goto("/admin/orders/order/")
    expired_message = run_action(page, to_expire.pk, "expire_orders")
    extended_message = run_action(page, to_extend.pk, "extend_expiration")

    assert "Expired 1 order(s)." in expired_message
    assert "Extended 1 order(s)." in extended_message
    assert Order.objects.get(pk=to_expire.pk).status == OrderStatus.EXPIRED
    assert Order.objects.get(pk=to_extend.pk).expiration_time >= deadline + timedelta(minutes=14)
    short = page.locator(f"span.gh-id[title='{to_extend.pk}']")
    assert short.inner_text() == f"{str(to_extend.pk)[:8]}…"
    assert re.search(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d", page.inner_text("#result_list"))
    screenshot(page, "orders-list")

    page.goto(f"/admin/orders/order/{to_extend.pk}/change/")
    assert page.locator("input[name=_save]").count() == 0
    screenshot(page, "order-page")


def test_staff_retries_a_dead_outbox_event(staff_page, screenshot):
    page, _ = staff_page
    dead = OutboxEventFactory(status=OutboxEvent.Status.DEAD, attempts=5, last_error="HTTP 500 from webhook")
    OutboxEventFactory(status=OutboxEvent.Status.PENDING)

    page.goto("/admin/outbox/outboxevent/?status__exact=dead")
    screenshot(page, "outbox-dead")
    message = run_action(page, dead.pk, "retry_events")

    assert "1 dead events queued for retry." in message
    dead.refresh_from_db()
    assert (dead.status, dead.attempts) == (OutboxEvent.Status.PENDING, 0)
    page.goto(f"/admin/outbox/outboxevent/{dead.pk}/change/")
    assert "Pending events cannot be deleted" in page.inner_text("ul.messagelist")
    assert page.locator("a.deletelink").count() == 0


def test_staff_opens_the_dashboard(staff_page, http_server_factory, screenshot):
    page, base = staff_page
    upstream = http_server_factory(lambda request: Reply(503 if request.path.endswith("/7") else 200))
    proxy_route(upstream.url, path="/shop/{item}", retry_count=0)
    proxy_route("http://127.0.0.1:9", path="/down/**", retry_count=0)
    for index in range(40):
        requests.get(f"{base}/gw/shop/{index % 10}", timeout=5)
    for _ in range(6):
        requests.get(f"{base}/gw/down/x", timeout=5)
    OrderFactory.create_batch(3)
    OrderFactory(status=OrderStatus.PAID)
    OutboxEventFactory(status=OutboxEvent.Status.DEAD)

    deadline = time.monotonic() + 5
    while True:
        page.goto("/admin/dashboard/")
        shown = page.inner_text("#traffic")
        if ("/shop/{item}" in shown and "/down/**" in shown) or time.monotonic() > deadline:
            break
        time.sleep(0.1)

    traffic = page.inner_text("#traffic")
    assert "/shop/{item}" in traffic and "/down/**" in traffic
    assert page.locator("#traffic svg.spark").count() >= 2
    assert "OPEN" in page.inner_text("#circuits")
    assert page.locator("#orders svg.bars").count() == 1
    assert "dead" in page.inner_text("#outbox")
    assert (page.locator("#sagas").count() == 1) is apps.is_installed("sagas")
    screenshot(page, "dashboard")


def test_api_docs_page_loads(staff_page, screenshot):
    page, _ = staff_page

    response = page.goto("/api/docs")

    assert response.status == 200
    assert "Gatehouse" in page.title()
    if apps.is_installed("drf_spectacular_sidecar"):
        # Bundled Swagger UI assets (no CDN): the UI renders the schema's title offline.
        page.wait_for_selector(".swagger-ui .info .title")
        assert "Gatehouse API" in page.inner_text(".swagger-ui .info .title")
    screenshot(page, "api-docs")
