"""Running a mounted ASGI app's lifespan from the entrance's own (startup and shutdown events).

An app that does not speak lifespan (it raises or returns on a `lifespan` scope without
answering) is fine: its startup and shutdown are then no-ops, as ASGI servers treat it.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

logger = logging.getLogger("gatehouse.server")


class MountedLifespan:
    def __init__(self, app: Any, name: str) -> None:
        self.app = app
        self.name = name
        self._inbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self._outbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None
        self._started = False

    async def _run(self, scope: dict[str, Any]) -> None:
        try:
            await self.app(scope, self._inbox.get, self._outbox.put)
        except Exception:
            if not self._started:
                logger.debug("%s has no lifespan support", self.name)
            else:
                logger.exception("%s lifespan failed", self.name)

    async def _answer(self) -> dict[str, Any] | None:
        assert self._task is not None
        getter = asyncio.ensure_future(self._outbox.get())
        done, _ = await asyncio.wait({getter, self._task}, return_when=asyncio.FIRST_COMPLETED)
        if getter in done:
            return getter.result()
        getter.cancel()
        return None  # the app returned: no (more) lifespan

    async def startup(self, scope: dict[str, Any]) -> None:
        self._task = asyncio.ensure_future(self._run({**scope, "type": "lifespan"}))
        await self._inbox.put({"type": "lifespan.startup"})
        answer = await self._answer()
        self._started = answer is not None
        if answer and answer["type"] == "lifespan.startup.failed":
            raise RuntimeError(f"{self.name} failed to start: {answer.get('message', '')}")

    async def shutdown(self) -> None:
        if self._task is None or self._task.done():
            return
        await self._inbox.put({"type": "lifespan.shutdown"})
        answer = await self._answer()
        if answer and answer["type"] == "lifespan.shutdown.failed":
            logger.error("%s failed to shut down: %s", self.name, answer.get("message", ""))
