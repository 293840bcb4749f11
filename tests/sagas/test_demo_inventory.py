"""The demo inventory service (demo/inventory.py) serves the placement saga end to end."""

from __future__ import annotations

import importlib.util
import threading
from http.server import ThreadingHTTPServer

import pytest
import requests
from django.core.management import call_command

from orders.models import OrderStatus
from orders.services import order_cancel
from sagas.models import SagaStatus
from tests.sagas.conftest import drive, pay, place_order, saga_of
from tests.support.servers import ROOT

pytestmark = pytest.mark.django_db


@pytest.fixture
def demo_inventory(settings):
    spec = importlib.util.spec_from_file_location("demo_inventory", ROOT / "demo" / "inventory.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    server = ThreadingHTTPServer(("127.0.0.1", 0), module.make_handler(module.Inventory(stock=3)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}"
    # the demo route file names the service; point its target at this server
    call_command("load_routes", str(ROOT / "demo" / "routes.json"))
    from gateway.models import ServiceTarget

    ServiceTarget.objects.filter(service__name="demo-inventory").update(url=url)
    settings.INVENTORY_SERVICE = "demo-inventory"
    yield url
    server.shutdown()
    server.server_close()


def test_demo_inventory_reserves_confirms_rejects_and_releases(demo_inventory):
    paid = place_order()  # 2 of SKU-1
    drive()
    assert requests.get(f"{demo_inventory}/stock", timeout=5).json() == {"SKU-1": 1}
    pay(paid)
    drive()
    assert saga_of(paid).status == SagaStatus.COMPLETED
    assert requests.get(f"{demo_inventory}/reservations", timeout=5).json()[str(saga_of(paid).id)][
        "status"
    ] == ("confirmed")
    # 2 more do not fit into the 1 left: rejected, the order cancelled
    rejected = place_order()
    drive()
    rejected.refresh_from_db()
    assert rejected.status == OrderStatus.CANCELLED and saga_of(rejected).reason == "inventory_rejected"
    assert requests.get(f"{demo_inventory}/stock", timeout=5).json() == {"SKU-1": 1}


def test_demo_inventory_gives_stock_back_on_cancel(demo_inventory):
    order = place_order()
    drive()
    assert requests.get(f"{demo_inventory}/stock", timeout=5).json() == {"SKU-1": 1}
    order_cancel(order_id=order.id)
    drive()
    assert saga_of(order).status == SagaStatus.COMPENSATED
    assert requests.get(f"{demo_inventory}/stock", timeout=5).json() == {"SKU-1": 3}


def test_demo_inventory_release_gives_back_confirmed_stock_once():
    spec = importlib.util.spec_from_file_location("demo_inventory", ROOT / "demo" / "inventory.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    inventory = module.Inventory(stock=5)
    body = {"order_id": 1, "items": [{"sku": "S", "quantity": 2}]}

    assert inventory.handle("POST", "/reservations", {**body, "reservation_id": "r1"}, "k1")[0] == 201
    assert inventory.handle("POST", "/reservations/r1/confirm", {}, "k2")[0] == 200
    assert inventory.stock["S"] == 3
    assert inventory.handle("DELETE", "/reservations/r1", {}, "k3")[0] == 200
    assert inventory.handle("DELETE", "/reservations/r1", {}, "k4")[0] == 404  # a second release
    assert inventory.stock["S"] == 5
