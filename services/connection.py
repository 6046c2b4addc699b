"""The protocol server's record of one client connection."""

from __future__ import annotations

import asyncio

from services import wire


class Conn(wire.Inbox):
    """One client connection; its inbox gets what the dispatch loop routes to it."""

    __slots__ = (
        "accepted",
        "assigned",
        "created",
        "failed",
        "id",
        "websocket",
        "window",
        "worker",
    )

    def __init__(
        self, conn_id: str, loop: asyncio.AbstractEventLoop, websocket: bool = False
    ) -> None:
        super().__init__(loop)
        now = loop.time()
        self.id = conn_id
        self.websocket = websocket  # else an HTTP request
        self.window: wire.Window | None = None  # only streamed bodies and frames need one
        self.worker: str | None = None
        self.created = now
        self.assigned = now
        self.failed = False
        self.accepted = False  # a WebSocket its worker accepted: no denial response after that
