"""The server's request/response cycle (config/server/cycle.py): one write for a buffered
answer's head and body, the order of bytes kept for streams, HEAD and non-keep-alive closes,
and the disconnect notice the gateway uses instead of a task waiting on receive()."""

from __future__ import annotations

import asyncio
import logging

import pytest
from uvicorn.protocols.http.flow_control import FlowControl

from config.server.cycle import GatehouseCycle


class Transport:
    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.closed = False
        self.events: list[str] = []

    def write(self, data: bytes) -> None:
        assert not self.closed, "write after close"
        self.writes.append(data)
        self.events.append("write")

    def close(self) -> None:
        self.closed = True
        self.events.append("close")

    def is_closing(self) -> bool:
        return self.closed

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def get_extra_info(self, name: str, default: object = None) -> object:
        return default


def _cycle(transport: Transport, *, method: str = "GET", keep_alive: bool = True) -> GatehouseCycle:
    return GatehouseCycle(
        scope={"type": "http", "method": method, "http_version": "1.1", "headers": []},
        transport=transport,
        flow=FlowControl(transport),
        logger=logging.getLogger("test"),
        access_logger=logging.getLogger("test.access"),
        access_log=False,
        default_headers=[],
        message_event=asyncio.Event(),
        expect_100_continue=False,
        keep_alive=keep_alive,
        on_response=lambda: None,
    )


def _start(status: int = 200, headers: list[tuple[bytes, bytes]] | None = None) -> dict:
    return {"type": "http.response.start", "status": status, "headers": headers or []}


def test_a_buffered_answer_is_one_write_with_the_head_first():
    async def run() -> Transport:
        transport = Transport()
        cycle = _cycle(transport)
        await cycle.send(_start(headers=[(b"content-length", b"5"), (b"x-a", b"1")]))
        assert transport.writes == []  # held until the body
        await cycle.send({"type": "http.response.body", "body": b"hello"})
        assert cycle.response_complete
        return transport

    transport = asyncio.run(run())
    assert transport.writes == [b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\nx-a: 1\r\n\r\nhello"]
    assert not transport.closed


def test_a_stream_sends_the_head_with_its_first_chunk_then_each_chunk():
    async def run() -> Transport:
        transport = Transport()
        cycle = _cycle(transport)
        await cycle.send(_start())  # no length: uvicorn frames it chunked
        await cycle.send({"type": "http.response.body", "body": b"ab", "more_body": True})
        await cycle.send({"type": "http.response.body", "body": b"cde", "more_body": True})
        await cycle.send({"type": "http.response.body", "body": b""})
        return transport

    transport = asyncio.run(run())
    assert transport.writes == [
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n2\r\nab\r\n",
        b"3\r\ncde\r\n",
        b"0\r\n\r\n",
    ]


def test_head_and_no_keep_alive_write_the_head_before_closing():
    async def run() -> Transport:
        transport = Transport()
        cycle = _cycle(transport, method="HEAD", keep_alive=False)
        await cycle.send(_start(headers=[(b"content-length", b"42")]))
        await cycle.send({"type": "http.response.body", "body": b""})
        return transport

    transport = asyncio.run(run())
    assert transport.writes == [b"HTTP/1.1 200 OK\r\ncontent-length: 42\r\nconnection: close\r\n\r\n"]
    assert transport.events == ["write", "close"]


def test_a_body_longer_than_its_length_writes_nothing_and_raises():
    async def run() -> Transport:
        transport = Transport()
        cycle = _cycle(transport)
        await cycle.send(_start(headers=[(b"content-length", b"2")]))
        with pytest.raises(RuntimeError, match="longer than Content-Length"):
            await cycle.send({"type": "http.response.body", "body": b"too long"})
        return transport

    assert asyncio.run(run()).writes == []


def test_nothing_is_written_to_a_client_that_went_away():
    async def run() -> Transport:
        transport = Transport()
        cycle = _cycle(transport)
        await cycle.send(_start(headers=[(b"content-length", b"2")]))
        cycle.disconnected = True
        await cycle.send({"type": "http.response.body", "body": b"ok"})
        return transport

    assert asyncio.run(run()).writes == []


def test_the_disconnect_notice_calls_the_watcher_once_and_can_be_withdrawn():
    cycle = _cycle(Transport())
    calls: list[str] = []
    cycle.disconnect_watch(lambda: calls.append("gone"))
    cycle.disconnect_fire()
    cycle.disconnect_fire()
    assert calls == ["gone"]
    cycle.disconnect_watch(lambda: calls.append("again"))
    cycle.disconnect_watch(None)
    cycle.disconnect_fire()
    assert calls == ["gone"]
