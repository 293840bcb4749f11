"""Admin polish seen by staff: branding, readable lists, read-only pages, no loss of pending events."""

from __future__ import annotations

import re
from datetime import timedelta

import pytest
from django.utils import timezone

from gateway.models import Route, Service
from orders.models import Order, OrderStatus
from outbox.models import OutboxEvent
from tests.orders.factories import OrderFactory
from tests.outbox.factories import OutboxEventFactory

pytestmark = pytest.mark.django_db


def test_every_page_is_branded_gatehouse_and_links_the_dashboard_and_docs(admin_client):
    body = admin_client.get("/admin/").content.decode()

    assert "Django administration" not in body
    assert "<title>Routes, orders and events | Gatehouse admin</title>" in body
    assert re.search(r'id="site-name"><a [^>]*>.*Gatehouse</a>', body, re.S)
    assert 'href="/admin/dashboard/">Dashboard</a>' in body
    assert 'href="/api/docs">API docs</a>' in body
    assert "View site" not in body


def test_the_stylesheet_the_pages_link_is_served(admin_client, client):
    body = admin_client.get("/admin/").content.decode()
    href = re.search(r'href="([^"]*adminsite/admin\.css)"', body).group(1)

    response = client.get(href)

    assert response.status_code == 200
    assert b".gh-id" in b"".join(response.streaming_content)


def test_routes_list_has_seven_columns_and_cuts_long_patterns(admin_client):
    service = Service.objects.create(name="user-service.master")
    long_path = "/tenants/{tenant_id}/users/{user_id}/orders/{order_id}/items/**"
    Route.objects.create(
        methods=["GET"],
        path=long_path,
        service=service,
        required_permission="user.read",
        cache_ttl_seconds=30,
        idempotency="off",
        priority=5,
    )

    body = admin_client.get("/admin/gateway/route/").content.decode()

    header = re.search(r"<thead>(.*?)</thead>", body, re.S).group(1)
    assert header.count('scope="col"') == 8  # the selection checkbox and seven columns
    assert f'<span class="gh-pattern" title="{long_path}">' in body
    assert "token · user.read" in body
    assert "cache 30 s · priority 5" in body


def test_orders_list_shows_ids_short_with_the_full_one_on_hover_and_times_to_the_second(admin_client):
    order = OrderFactory(expiration_time=timezone.now().replace(microsecond=0) + timedelta(seconds=754))

    body = admin_client.get("/admin/orders/order/").content.decode()

    full = str(order.id)
    assert f'<span class="gh-id" title="{full}">{full[:8]}…</span>' in body
    assert order.expiration_time.strftime("%Y-%m-%d %H:%M:%S") in body


def test_order_page_has_no_save_button_and_a_post_changes_nothing(admin_client):
    order = OrderFactory()
    Order.objects.filter(pk=order.pk).update(updated_at=timezone.now() - timedelta(hours=1))
    before = Order.objects.get(pk=order.pk)
    url = f"/admin/orders/order/{order.pk}/change/"

    page = admin_client.get(url).content.decode()
    response = admin_client.post(url, {"_save": "Save"}, follow=True)

    assert 'name="_save"' not in page
    assert 'name="_continue"' not in page
    after = Order.objects.get(pk=order.pk)
    assert (after.updated_at, after.status) == (before.updated_at, before.status)
    assert "This page only shows the record" in response.content.decode()


@pytest.mark.parametrize("status", ["pending", "published", "dead"])
def test_outbox_event_page_has_no_save_button(admin_client, status):
    event = OutboxEventFactory(status=status)

    page = admin_client.get(f"/admin/outbox/outboxevent/{event.pk}/change/").content.decode()

    assert 'name="_save"' not in page
    assert ("/delete/" in page) is (status != "pending")


def test_pending_outbox_event_cannot_be_deleted_and_the_page_says_why(admin_client):
    event = OutboxEventFactory(status=OutboxEvent.Status.PENDING)

    page = admin_client.get(f"/admin/outbox/outboxevent/{event.pk}/change/").content.decode()
    delete_page = admin_client.get(f"/admin/outbox/outboxevent/{event.pk}/delete/")
    delete_post = admin_client.post(f"/admin/outbox/outboxevent/{event.pk}/delete/", {"post": "yes"})

    assert "Pending events cannot be deleted: the relay has not delivered them yet" in page
    assert delete_page.status_code == 403
    assert delete_post.status_code == 403
    assert OutboxEvent.objects.filter(pk=event.pk).exists()


def test_bulk_delete_refuses_a_selection_with_pending_events(admin_client):
    pending = OutboxEventFactory(status=OutboxEvent.Status.PENDING)
    published = OutboxEventFactory(status=OutboxEvent.Status.PUBLISHED)

    response = admin_client.post(
        "/admin/outbox/outboxevent/",
        {"action": "delete_selected", "_selected_action": [pending.pk, published.pk], "post": "yes"},
        follow=True,
    )

    assert "Nothing deleted: 1 selected event(s) are pending." in response.content.decode()
    assert OutboxEvent.objects.filter(pk__in=[pending.pk, published.pk]).count() == 2


def test_bulk_delete_of_published_and_dead_events_confirms_then_deletes(admin_client):
    published = OutboxEventFactory(status=OutboxEvent.Status.PUBLISHED)
    dead = OutboxEventFactory(status=OutboxEvent.Status.DEAD)
    selection = {"action": "delete_selected", "_selected_action": [published.pk, dead.pk]}

    confirmation = admin_client.post("/admin/outbox/outboxevent/", selection)
    admin_client.post("/admin/outbox/outboxevent/", {**selection, "post": "yes"})

    assert "Are you sure" in confirmation.content.decode()
    assert not OutboxEvent.objects.filter(pk__in=[published.pk, dead.pk]).exists()


def test_expire_action_still_works_from_the_orders_list(admin_client):
    order = OrderFactory()

    admin_client.post("/admin/orders/order/", {"action": "expire_orders", "_selected_action": [order.pk]})

    assert Order.objects.get(pk=order.pk).status == OrderStatus.EXPIRED
