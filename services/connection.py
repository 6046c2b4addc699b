"""The protocol server's record of one client connection."""

from __future__ import annotations

import asyncio

from services import messages as msg
from services import wire


class Conn(wire.Inbox):
    """One client connection; its inbox gets what the dispatch loop routes to it."""

    __slots__ = (
        "accepted",
        "assigned",
        "consumed",
        "created",
        "failed",
        "id",
        "takes",
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
        self.takes = msg.WEBSOCKET_REPLIES if websocket else msg.HTTP_REPLIES
        self.window: wire.Window | None = None  # only streamed bodies and frames need one
        self.consumed: wire.Consumed | None = None  # data from the worker the client took
        self.worker: str | None = None
        self.created = now
        self.assigned = now
        self.failed = False
        self.accepted = False  # a WebSocket its worker accepted: no denial response after that
