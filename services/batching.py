"""Messages for one peer posted during one event-loop turn leave as one layer message (``k.batch``).

A worker answering a burst of requests for the same protocol server (it takes the burst in one
turn, and a fast app answers each before yielding) would otherwise pay the layer's per-message
cost for every reply: its own send, and the protocol server's receive; likewise a protocol
server forwarding a WebSocket client's burst of frames. Held until the end of the turn and sent
together, they cost one. Order per peer is kept: one sender per peer sends everything posted
for it in posting order, and a message too big to share (a large body slice) goes alone, in its
place. A peer that cannot be reached costs only its own connections.

In-process layers hand message objects over without encoding them (``send_trusted``), so there
batching would only add work: :func:`worth_batching` says when to use it. Both processes' own
channels are read by :func:`dispatch`, which unpacks batches.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine
from typing import Any

from layer.base import BaseChannelLayer
from layer.exceptions import MessageTooLarge
from layer.inmemory import InMemoryChannelLayer
from layer.messages import Message
from services import wire

log = logging.getLogger("layerkit.batching")

ALONE = 4096  # bytes of body or frame data above which a message is sent on its own
MOST = 64  # messages per batch

# channel, message, why, refused (the layer refused the message as too large: the peer is fine)
Lost = Callable[[str, Message, str, bool], None]


def worth_batching(layer: BaseChannelLayer) -> bool:
    """Whether messages for one peer are worth batching on ``layer`` (not in-process)."""
    return not isinstance(layer, InMemoryChannelLayer)


def _alone(message: Message) -> bool:
    data = message.get("b", message.get("t"))
    return data is not None and len(data) > ALONE


async def dispatch(
    layer: BaseChannelLayer, channel: str, route: Callable[[Message], None], retry: float
) -> None:
    """Receive on a process's own ``channel`` forever, handing every message to ``route`` (the
    messages of a ``k.batch`` one by one). A failing receive is retried after ``retry`` s; a
    message ``route`` cannot read (not from one of our peers) is logged and skipped."""
    receive = layer.receive
    while True:
        try:
            message = await receive(channel)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("receiving on %s failed; retrying", channel)
            await asyncio.sleep(retry)
            continue
        try:
            if message.get("type") == wire.BATCH:
                for one in message["ms"]:
                    route(one)
            else:
                route(message)
        except (KeyError, TypeError, AttributeError):
            log.error("ignoring a malformed message of type %r on %s", message.get("type"), channel)


async def deliver(layer: BaseChannelLayer, channel: str, message: Message) -> str | None:
    """Send to a peer, waiting a while if its channel is full; why it failed, or None.

    Any failure but a too-large message counts as the peer being unreachable: an exception
    escaping here would leave the batcher's queue for that peer stuck behind it."""
    try:
        if await wire.send_patiently(layer, channel, message):
            return None
        return "stayed full"
    except MessageTooLarge:
        raise  # the message's fault, not the peer's: the caller decides
    except Exception as exc:  # e.g. its shard is down, or refused the write (Redis OOM)
        return f"is unreachable ({type(exc).__name__}: {exc})"


class Batcher:
    """Per-peer queues of posted messages, sent at the end of the turn they were posted in
    (a send that has to wait finishes in a task, and that peer's later posts wait for it)."""

    __slots__ = ("_busy", "_layer", "_loop", "_lost", "_queues", "_tasks")

    def __init__(self, layer: BaseChannelLayer, lost: Lost) -> None:
        self._layer = layer
        self._lost = lost  # told of every message that could not be delivered, and why
        self._loop: asyncio.AbstractEventLoop | None = None
        self._queues: dict[str, list[Message]] = {}
        self._busy: set[str] = set()  # peers whose queue is being sent
        self._tasks: set[asyncio.Task[None]] = set()  # sends that had to wait

    def post(self, channel: str, message: Message) -> None:
        """Queue ``message`` for ``channel``; it leaves at the end of this loop turn."""
        queues = self._queues
        if not queues:
            if self._loop is None:
                self._loop = asyncio.get_running_loop()
            self._loop.call_soon(self._flush)
        queue = queues.get(channel)
        if queue is None:
            queue = queues[channel] = []
        queue.append(message)

    def _flush(self) -> None:
        """End of the turn: start sending each peer's queue, unless a send to it is running
        (that one sends what was queued meanwhile when it is done, keeping the order)."""
        for channel in list(self._queues):
            if channel not in self._busy:
                self._busy.add(channel)
                task = eager(self._drain(channel))
                if task is not None:
                    self._tasks.add(task)
                    task.add_done_callback(self._tasks.discard)

    async def _drain(self, channel: str) -> None:
        try:
            while True:
                queue = self._queues.pop(channel, None)
                if not queue:
                    return
                await self._send_all(channel, queue)
        finally:
            self._busy.discard(channel)

    async def _send_all(self, channel: str, queue: list[Message]) -> None:
        batch: list[Message] = []
        for message in queue:
            if _alone(message):
                await self._send(channel, batch)
                batch = []
                await self._send(channel, [message])
            else:
                batch.append(message)
                if len(batch) == MOST:
                    await self._send(channel, batch)
                    batch = []
        await self._send(channel, batch)

    async def _send(self, channel: str, messages: list[Message]) -> None:
        if not messages:
            return
        message = messages[0] if len(messages) == 1 else {"type": wire.BATCH, "ms": messages}
        try:
            why = await deliver(self._layer, channel, message)
        except MessageTooLarge as exc:
            if len(messages) > 1:  # large headers are not counted: one by one instead
                for one in messages:
                    await self._send(channel, [one])
            else:
                self._lost(channel, message, f"refused a message: {exc}", True)
            return
        if why is not None:
            for lost in messages:
                self._lost(channel, lost, why, False)

    async def close(self) -> None:
        """Wait until everything posted so far has been sent (or given up on)."""
        if self._queues:
            self._flush()
        while self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)


def eager(coro: Coroutine[Any, Any, None]) -> asyncio.Task[None] | None:
    """Run ``coro`` now, up to its first suspension; a task finishes it if it suspends.

    A send to a layer rarely waits (IPC never, Redis only without credit), so this sends in
    this loop turn instead of a task's first step in the next one (Python 3.12's eager tasks).
    """
    try:
        waiting = coro.send(None)
    except StopIteration:
        return None
    return asyncio.ensure_future(_resume(coro, waiting))


async def _resume(coro: Coroutine[Any, Any, None], waiting: Any) -> None:
    """Drive a started coroutine on as a task would: wait for what it waits on, step it."""
    try:
        while True:
            if waiting is None:  # a bare yield (asyncio.sleep(0))
                await asyncio.sleep(0)
            else:  # a future: once it is done, the coroutine's await returns or raises
                await asyncio.wait((waiting,))
            try:
                waiting = coro.send(None)
            except StopIteration:
                return
    finally:
        coro.close()  # cancelled while waiting: run its finally blocks
