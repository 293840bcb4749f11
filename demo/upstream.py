"""A tiny demo upstream for `scripts/run`: echoes every request it receives as JSON.

    python demo/upstream.py [--port 8001]

`GET /gw/demo/hello` through the gateway arrives here as `GET /demo/hello` with the forwarding
headers the gateway added, which the answer shows. Standard library only.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class EchoHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "demo-upstream/1.0"

    def _echo(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        payload = {
            "method": self.command,
            "path": self.path,
            "headers": dict(self.headers.items()),
            "body": body.decode("utf-8", "replace"),
            "served_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        status = 201 if self.command == "POST" else 200
        data = json.dumps(payload, indent=2).encode() + b"\n"
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = do_OPTIONS = _echo

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        print(json.dumps({"logger": "demo-upstream", "message": format % args}), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description="Echoing demo upstream")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8001)
    args = parser.parse_args()
    server = ThreadingHTTPServer((args.host, args.port), EchoHandler)
    server.daemon_threads = True
    print(
        json.dumps({"logger": "demo-upstream", "message": f"listening on {args.host}:{args.port}"}),
        flush=True,
    )
    with contextlib.suppress(KeyboardInterrupt):
        server.serve_forever()


if __name__ == "__main__":
    main()
