"""Raw-socket helpers for the server-layer tests: what a hostile or broken client sends."""

from __future__ import annotations

import json
import socket
import time
from urllib.parse import urlsplit


def address(url: str) -> tuple[str, int]:
    parts = urlsplit(url)
    return parts.hostname or "127.0.0.1", parts.port or 80


def exchange(url: str, data: bytes, *, timeout: float = 5.0, shut_write: bool = False) -> bytes:
    """Send `data`, read until the server closes (or `timeout`); the bytes it answered."""
    with socket.create_connection(address(url), timeout=timeout) as sock:
        sock.sendall(data)
        if shut_write:
            sock.shutdown(socket.SHUT_WR)
        return read_until_closed(sock, timeout=timeout)


def read_until_closed(sock: socket.socket, *, timeout: float) -> bytes:
    deadline = time.monotonic() + timeout
    out = b""
    while time.monotonic() < deadline:
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            break
        except ConnectionResetError:
            break
        if not chunk:
            break
        out += chunk
    return out


def parse(answer: bytes) -> tuple[int, dict[str, str], bytes]:
    head, _, body = answer.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return status, headers, body


def assert_problem(answer: bytes, status: int) -> dict:
    got, headers, body = parse(answer)
    assert got == status, answer[:300]
    assert headers["content-type"] == "application/problem+json"
    problem = json.loads(body)
    assert problem["status"] == status and problem["correlation_id"]
    return problem
