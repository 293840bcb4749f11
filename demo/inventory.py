"""A small demo inventory service for `scripts/run`: holds stock per SKU and reservations.

    python demo/inventory.py [--port 8002] [--stock 100]

The order placement saga (docs/sagas.md) calls it at the targets of the gateway Service named
by INVENTORY_SERVICE (`demo-inventory` in demo/routes.json):
  POST   /reservations                    {"reservation_id", "order_id", "items": [{"sku", "quantity"}]}
                                          → 201 held, 409 not enough stock
  POST   /reservations/{id}/confirm       → 200 confirmed, 404 unknown
  DELETE /reservations/{id}               → 200 released (stock back, held or confirmed), 404 unknown
  GET    /stock, GET /reservations        what it holds (for the curious)
A repeated Idempotency-Key answers as the first time without acting again. In memory only;
standard library only.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import threading
from collections import defaultdict
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Inventory:
    def __init__(self, stock: int) -> None:
        self.stock: defaultdict[str, int] = defaultdict(lambda: stock)
        self.reservations: dict[str, dict] = {}
        self.answers: dict[str, tuple[int, dict]] = {}  # Idempotency-Key → first answer
        self.lock = threading.Lock()

    def handle(self, method: str, path: str, body: dict, key: str) -> tuple[int, dict]:
        with self.lock:
            if key and key in self.answers:
                return self.answers[key]
            answer = self._act(method, path.strip("/").split("/"), body)
            if key and method != "GET":
                self.answers[key] = answer
            return answer

    def _act(self, method: str, parts: list[str], body: dict) -> tuple[int, dict]:
        if method == "GET" and parts == ["stock"]:
            return 200, dict(self.stock)
        if method == "GET" and parts == ["reservations"]:
            return 200, self.reservations
        if method == "POST" and parts == ["reservations"]:
            reservation_id, items = body.get("reservation_id"), body.get("items") or []
            if not reservation_id or not isinstance(items, list):
                return 422, {"error": "reservation_id and items are required"}
            if reservation_id in self.reservations:
                return 200, self.reservations[reservation_id]
            short = [i["sku"] for i in items if self.stock[i["sku"]] < int(i["quantity"])]
            if short:
                return 409, {"error": "not enough stock", "skus": short}
            for item in items:
                self.stock[item["sku"]] -= int(item["quantity"])
            self.reservations[reservation_id] = {
                "status": "held",
                "order_id": body.get("order_id"),
                "items": items,
            }
            return 201, self.reservations[reservation_id]
        if len(parts) >= 2 and parts[0] == "reservations":
            reservation = self.reservations.get(parts[1])
            if reservation is None:
                return 404, {"error": "no such reservation"}
            if method == "POST" and parts[2:] == ["confirm"]:
                reservation["status"] = "confirmed"
                return 200, reservation
            if method == "DELETE" and len(parts) == 2:
                # held or confirmed, the reservation's stock comes back once: it is deleted here
                for item in reservation["items"]:
                    self.stock[item["sku"]] += int(item["quantity"])
                del self.reservations[parts[1]]
                return 200, {"status": "released"}
        return 404, {"error": "not found"}


def make_handler(inventory: Inventory) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        server_version = "demo-inventory/1.0"
        # Head and body leave in one write (flushed after each request): two small writes
        # would meet the client's delayed ACK and cost ~40 ms per call.
        wbufsize = 64 * 1024

        def _serve(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length) if length else b""
            try:
                body = json.loads(raw) if raw else {}
            except ValueError:
                body = None
            if not isinstance(body, dict):
                status, answer = 400, {"error": "the body must be a JSON object"}
            else:
                status, answer = inventory.handle(
                    self.command, self.path, body, self.headers.get("Idempotency-Key", "")
                )
            data = json.dumps(answer).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        do_GET = do_POST = do_DELETE = _serve

        def log_message(self, format: str, *args: object) -> None:  # noqa: A002
            print(json.dumps({"logger": "demo-inventory", "message": format % args}), flush=True)

    return Handler


def main() -> None:
    parser = argparse.ArgumentParser(description="Demo inventory service")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8002)
    parser.add_argument("--stock", type=int, default=100, help="initial stock of every SKU")
    args = parser.parse_args()
    server = ThreadingHTTPServer((args.host, args.port), make_handler(Inventory(args.stock)))
    server.daemon_threads = True
    print(
        json.dumps({"logger": "demo-inventory", "message": f"listening on {args.host}:{args.port}"}),
        flush=True,
    )
    with contextlib.suppress(KeyboardInterrupt):
        server.serve_forever()


if __name__ == "__main__":
    main()
