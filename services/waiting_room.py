"""New WebSockets that found the work channel full wait here for room, in arrival order.

A full ``work.asgi`` refuses an HTTP request at once (503: shed load, the client retries). A
WebSocket handshake is different: reconnect storms (a deploy, a network blip) bring every
member of a chat back within a second or two, each handshake is quick work, and refusing a
tenth of them at once only makes them come back again. So a handshake that finds the channel
full waits — until its pickup deadline at most — and one task per protocol server sends the
waiting ones as room appears (one poller with a backoff, not one per handshake).
"""

from __future__ import annotations

import asyncio
from collections import deque

from layer.base import BaseChannelLayer
from layer.exceptions import ChannelFull
from layer.messages import Message
from services import wire

MAX_PAUSE = 0.05  # seconds between tries at most while the channel stays full


class WaitingRoom:
    """Sends new connections to ``work.asgi``, queueing them while it is full."""

    def __init__(self, layer: BaseChannelLayer) -> None:
        self.layer = layer
        self._queue: deque[tuple[Message, float, asyncio.Future[bool]]] = deque()
        self._task: asyncio.Task[None] | None = None

    async def send(self, message: Message, deadline: float) -> bool:
        """Send ``message``; False if the channel stayed full until ``deadline`` (loop time).
        Other errors of the layer are raised."""
        if not self._queue:
            try:
                await self.layer.send_trusted(wire.WORK_CHANNEL, message)
                return True
            except ChannelFull:
                pass
        loop = asyncio.get_running_loop()
        sent: asyncio.Future[bool] = loop.create_future()
        self._queue.append((message, deadline, sent))
        if self._task is None:
            self._task = asyncio.create_task(self._drain(loop), name="protocol-waiting-room")
        return await sent  # cancelled (the client left): _drain skips it

    async def _drain(self, loop: asyncio.AbstractEventLoop) -> None:
        pause = wire.SEND_RETRY
        queue = self._queue
        try:
            while queue:
                message, deadline, sent = queue[0]
                if sent.done():
                    queue.popleft()
                    continue
                if loop.time() > deadline:
                    queue.popleft()
                    sent.set_result(False)
                    continue
                try:
                    await self.layer.send_trusted(wire.WORK_CHANNEL, message)
                except ChannelFull:
                    await asyncio.sleep(pause)
                    pause = min(2 * pause, MAX_PAUSE)
                    continue
                except Exception as error:  # the layer is down: the caller says so
                    queue.popleft()
                    if not sent.done():
                        sent.set_exception(error)
                    continue
                queue.popleft()
                if not sent.done():
                    sent.set_result(True)
                pause = wire.SEND_RETRY
        finally:
            self._task = None
