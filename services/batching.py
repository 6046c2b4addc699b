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
channels are read by :func:`dispatch`, which unpacks batches; it and the worker's runners take
with a :class:`Taker`, which checks every message (services/messages.py), dropping what it
cannot use (:class:`Rejects`).
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Callable

from layer.base import BaseChannelLayer
from layer.exceptions import ChannelFull, MessageTooLarge
from layer.logs import Throttled
from layer.messages import Message
from services import messages, wire
from services.eager import eager
from services.messages import BadMessage
from services.metrics import Metrics

log = logging.getLogger("layerkit.batching")

ALONE = 4096  # bytes of body or frame data above which a message is sent on its own
MOST = 64  # messages per batch

# channel, message, why, refused (the layer refused the message as too large: the peer is fine)
Lost = Callable[[str, Message, str, bool], None]


def worth_batching(layer: BaseChannelLayer) -> bool:
    """Whether messages for one peer are worth batching on ``layer``: not when it hands message
    objects over (in-process), where a send costs about nothing."""
    return not layer.hands_over_objects


def checked(layer: BaseChannelLayer, channel: messages.Channel) -> messages.Channel | None:
    """``channel`` if what is taken from ``layer`` must be checked against it: when it crosses
    processes (IPC, Redis), where a peer may run another version and anything else may write.
    An in-process layer (combined mode) only carries what this process sent itself, built by
    services/messages.py from values checked where the app handed them over: None."""
    return channel if layer.cross_process else None


def _alone(message: Message) -> bool:
    return messages.data_size(message) > ALONE


class Rejects:
    """What a role does with a message it takes but cannot use: counts it
    (``kit_bad_messages_total{role,reason}``), logs the first of each reason and then at most
    one line per reason every 10 s, and drops it. A known type with a bad field that names one
    of our connections also fails that connection (``spoiled``): its peer meant something for it
    that we cannot know, and waiting on would only leave its client hanging."""

    def __init__(
        self,
        role: str,
        metrics: Metrics,
        log: logging.Logger,
        spoiled: Callable[[str, BadMessage], None] | None = None,
    ) -> None:
        self._role = role
        self._metrics = metrics
        self._log = Throttled(log)
        self._spoiled = spoiled

    def __call__(self, bad: BadMessage, message: object, channel: str) -> None:
        self._metrics.bad_message(self._role, bad.reason)
        what = messages.describe(message)
        self._log(
            bad.reason, logging.WARNING, "ignoring a malformed message of type %s on %s: %s [%s]",
            what, channel, bad, bad.reason,
        )  # fmt: skip
        if self._spoiled is not None and bad.conn is not None and bad.kind is not None:
            self._spoiled(bad.conn, bad)

    def undecodable(self, channel: str, error: ValueError) -> None:
        """The layer took a message off ``channel`` that it could not decode (or decrypt)."""
        self._metrics.bad_message(self._role, "undecodable")
        self._log(
            "undecodable", logging.WARNING, "ignoring a message on %s that the layer could not "
            "decode (%s) [undecodable]", channel, f"{type(error).__name__}: {error}".rstrip(": "),
        )  # fmt: skip


class Taker:
    """Takes messages off one ``channel`` of ``layer`` one at a time, each checked against
    ``taking`` first (unless None, see :func:`checked`); :meth:`take` gives None instead of one
    it could not use: undecodable or malformed (counted and logged by ``rejects``), or after a
    failing receive (logged at most once per ``retry`` s by all who take, then waited
    ``retry`` s on). Both roles' dispatch loops and the worker's runners take so."""

    __slots__ = ("_failed", "_receive", "channel", "check", "rejects", "retry")

    def __init__(
        self,
        layer: BaseChannelLayer,
        channel: str,
        taking: messages.Channel | None,
        rejects: Rejects,
        retry: float,
    ) -> None:
        self._receive = layer.receive
        self.channel = channel
        self.check = taking.check if taking is not None else None  # messages.check, one call less
        self.rejects = rejects
        self.retry = retry
        self._failed = -math.inf  # loop time the last failed receive was logged

    async def take(self) -> Message | None:
        try:
            message = await self._receive(self.channel)
        except asyncio.CancelledError:
            raise
        except ValueError as error:  # taken off the channel, but unreadable: skip it
            self.rejects.undecodable(self.channel, error)
            await asyncio.sleep(0)  # a flood of them must not starve the other tasks
            return None
        except Exception:
            now = asyncio.get_running_loop().time()
            if now - self._failed > self.retry:  # once, not once per runner
                self._failed = now
                log.exception("receiving on %s failed; retrying", self.channel)
            await asyncio.sleep(self.retry)
            return None
        if self.check is not None:
            try:
                self.check(message)
            except BadMessage as bad:
                self.rejects(bad, message, self.channel)
                return None
        return message


async def dispatch(taker: Taker, route: Callable[[Message], None]) -> None:
    """Take from a process's own channel forever, handing every message to ``route`` (the
    messages of a ``k.batch`` one by one, each checked too)."""
    take, check, rejects = taker.take, taker.check, taker.rejects
    while True:
        message = await take()
        if message is None:
            continue
        if message[messages.TYPE] != messages.BATCH:
            route(message)
            continue
        for one in message[messages.MESSAGES]:
            if check is not None:
                try:
                    check(one, True)
                except BadMessage as bad:
                    rejects(bad, one, taker.channel)
                    continue
            route(one)


async def deliver(layer: BaseChannelLayer, channel: str, message: Message) -> str | None:
    """Send to a peer, waiting a while if its channel is full; why it failed, or None.

    Any failure but a too-large message counts as the peer being unreachable: an exception
    escaping here would leave the batcher's queue for that peer stuck behind it."""
    try:
        try:
            await layer.send_trusted(channel, message)  # wire.send_patiently's first try, inline
            return None
        except ChannelFull:
            pass
        if await wire.resend_patiently(layer, channel, message):
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
        finally:
            self._busy.discard(channel)

    async def _send(self, channel: str, queue: list[Message]) -> None:
        if not queue:
            return
        message = queue[0] if len(queue) == 1 else messages.batch(queue)
        try:
            why = await deliver(self._layer, channel, message)
        except MessageTooLarge as exc:
            if len(queue) > 1:  # large headers are not counted: one by one instead
                for one in queue:
                    await self._send(channel, [one])
            else:
                self._lost(channel, message, f"refused a message: {exc}", True)
            return
        if why is not None:
            for lost in queue:
                self._lost(channel, lost, why, False)

    async def close(self) -> None:
        """Wait until everything posted so far has been sent (or given up on)."""
        if self._queues:
            self._flush()
        while self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
