"""ASGI lifespan for the worker's app, "auto" style like uvicorn: unsupported is not an error.

Django Channels' ``ProtocolTypeRouter`` raises for the ``lifespan`` scope; that only means the app
has no startup work. An app that supports lifespan and reports ``startup.failed`` stops the worker.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from layer.messages import Message
from services.instance import ASGIApp

log = logging.getLogger("layerkit.worker")


class Lifespan:
    """Runs the app's lifespan protocol in a background task."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.state: dict[str, Any] = {}
        self._events: asyncio.Queue[Message] = asyncio.Queue()
        self._started = asyncio.Event()
        self._stopped = asyncio.Event()
        self._failed: str | None = None
        self._supported = True
        self._task: asyncio.Task[None] | None = None

    async def startup(self) -> None:
        """Run startup; raise ``RuntimeError`` if the app says it failed."""
        self._task = asyncio.create_task(self._run())
        await self._events.put({"type": "lifespan.startup"})
        await self._started.wait()
        if self._failed is not None:
            raise RuntimeError(f"application startup failed: {self._failed}")

    async def shutdown(self) -> None:
        if self._task is None or not self._supported or self._task.done():
            return
        await self._events.put({"type": "lifespan.shutdown"})
        try:
            await asyncio.wait_for(self._stopped.wait(), 10)
        except TimeoutError:
            self._task.cancel()

    async def _run(self) -> None:
        scope = {"type": "lifespan", "asgi": {"version": "3.0", "spec_version": "2.0"}}
        scope["state"] = self.state
        try:
            await self.app(scope, self._events.get, self._send)
        except Exception as exc:
            if not self._started.is_set():
                self._supported = False
                log.debug("application does not support lifespan: %r", exc)
            else:
                log.exception("application lifespan raised")
        finally:
            self._started.set()
            self._stopped.set()

    async def _send(self, message: Message) -> None:
        kind = message["type"]
        if kind in ("lifespan.startup.complete", "lifespan.startup.failed"):
            if kind.endswith("failed"):
                self._failed = message.get("message", "")
            self._started.set()
        elif kind.startswith("lifespan.shutdown"):
            self._stopped.set()
