"""The protocol server's record of one client connection, and the messages only it posts itself."""

from __future__ import annotations

import asyncio

from services import wire

FAIL = "k.fail"  # local only: the watchdog or the body pump ends a connection (code)
GONE = "k.gone"  # local only: the client disconnected


class Conn(wire.Inbox):
    """One client connection; its inbox gets what the dispatch loop routes to it."""

    __slots__ = ("assigned", "created", "failed", "id", "window", "worker")

    def __init__(self, conn_id: str, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(loop)
        now = loop.time()
        self.id = conn_id
        self.window: wire.Window | None = None  # only streamed bodies and frames need one
        self.worker: str | None = None
        self.created = now
        self.assigned = now
        self.failed = False
