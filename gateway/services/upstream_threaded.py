"""TEMPORARY: the `gateway.services.upstream` interface over the sync `proxy_forward` (urllib3)
in a thread pool, until the asyncio upstream client lands; deleted then."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import Any

from urllib3.util import SKIP_HEADER

from gateway.services.proxy import proxy_forward

_pool = ThreadPoolExecutor(max_workers=64, thread_name_prefix="upstream")


class UpstreamAnswer:
    def __init__(self, response: Any) -> None:
        self.status = response.status
        self.reason = response.reason
        self.headers = response.headers
        self.body = response.body
        self._stream = response.stream
        self.stream = self._chunks() if response.stream is not None else None

    async def _chunks(self) -> AsyncIterator[bytes]:
        loop = asyncio.get_running_loop()
        chunks = iter(self._stream)
        while True:
            chunk = await loop.run_in_executor(_pool, next, chunks, None)
            if chunk is None:
                return
            yield chunk

    async def release(self) -> None:
        stream, self._stream = self._stream, None
        if stream is not None:
            await asyncio.get_running_loop().run_in_executor(_pool, stream.close)


async def upstream_forward(
    *,
    route: Any,
    method: str,
    path: str,
    query_string: bytes | str,
    headers: list[tuple[str, str]],
    body: bytes,
    idempotency_key: bool,
) -> UpstreamAnswer:
    folded: dict[str, str] = {}
    for name, value in headers:
        folded[name] = f"{folded[name]}, {value}" if name in folded else value
    folded.setdefault("User-Agent", SKIP_HEADER)
    folded.setdefault("Accept-Encoding", SKIP_HEADER)
    if isinstance(query_string, bytes):
        query_string = query_string.decode("latin-1")
    call = partial(
        proxy_forward,
        route=route,
        method=method,
        path=path,
        query_string=query_string,
        headers=folded,
        body=body,
        idempotency_key=idempotency_key,
    )
    return UpstreamAnswer(await asyncio.get_running_loop().run_in_executor(_pool, call))


async def upstream_close() -> None:
    return None
