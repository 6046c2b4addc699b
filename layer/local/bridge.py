"""The Redis side of this host's process-specific channels: one bridge per inbox, into IPC.

A process-specific channel this host made gets messages over IPC (senders on this host) and
over Redis (senders elsewhere). The Redis layer keeps one inbox list per process (per routing
name, up to ``!``), and a group send puts one entry in it for all of that process's members
(their local parts, comma-separated). A *bridge*, one task per inbox and event loop, drains
that inbox in bulk and hands each message to the receive of this instance waiting on each
channel it names, if one is (as IPC hands a message to a receive it wakes: no shared memory
written), else pushes it into the channel's IPC queue (the pushes of a burst share IPC's
critical sections: its outbox, one per loop turn). A receive on such a channel then waits on
IPC alone, as any IPC receive does. (Until stop 28 every receive also kept a Redis receive of
its own per channel and interrupted its IPC wait when that one won: a task, a cancellation
and two critical sections per delivery, 4x the CPU per broadcast delivery to another host;
docs/layer.md, "Local + Redis".)

Guarantees: a bridge moves its inbox's entries in list order, so each remote sender's order
per channel holds; an entry is popped from Redis once and moved once (at most once); a message
keeps the expiry it was sent with (stamped into the IPC payload, see :func:`stamped`, and
checked when it is received); a channel whose IPC queue is full drops it, counted in
``dropped_full`` and logged, as a group send drops for a full member.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

from layer.base import Counters
from layer.exceptions import ChannelFull, InvalidName
from layer.logs import Throttled
from layer.names import require_valid_channel_name

log = logging.getLogger(__name__)

MARK = b"\xc1"  # never the first byte of an encoded message: msgpack leaves 0xc1 unused
WARN_EVERY = 10.0  # seconds between log lines about messages dropped on full channels

Drain = Callable[[str], Awaitable[list[tuple[int, bytes, bytes]]]]
Hand = Callable[[str, bytes], bool]  # to a receive of this instance waiting on the channel
Push = Callable[[str, bytes, int], Awaitable[None]]


def stamped(expires_at_ms: int, payload: bytes) -> bytes:
    """An IPC payload carrying a message from Redis with the expiry it was sent with."""
    return b"%s%013d%s" % (MARK, expires_at_ms, payload)


def opened(payload: bytes, counters: Counters) -> bytes | None:
    """The message of an IPC payload of a bridged channel; None if it expired (counted)."""
    if payload[:1] != MARK:
        return payload  # sent on this host
    if int(payload[1:14]) <= time.time() * 1000:
        counters.expired += 1
        return None
    return payload[14:]


class Bridges:
    """This instance's bridges, per inbox routing name (one event loop's: they are its tasks)."""

    def __init__(
        self,
        drain: Drain,
        hand: Hand,
        push: Push,
        capacity: Callable[[str], int],
        counters: Counters,
    ) -> None:
        self._drain = drain
        self._hand = hand
        self._push = push
        self._capacity = capacity
        self._counters = counters
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._dropped = 0  # not yet logged
        self._malformed = Throttled(log)  # forged entries: a few lines, not one each
        self._warned = 0.0

    def ensure(self, routing: str) -> None:
        """Have a bridge for inbox ``routing`` in a running loop: this one, unless another
        loop (thread) runs one, which serves this loop's receives as well, through IPC.
        ``async_to_sync`` may run each call in a fresh loop: a bridge of a loop no longer
        running is replaced. (Cheap: a receive calls it; ``get_running_loop`` is not.)"""
        task = self._tasks.get(routing)
        if task is None or task.done() or not task.get_loop().is_running():
            loop = asyncio.get_running_loop()
            self._tasks[routing] = loop.create_task(self._run(routing))

    async def _run(self, routing: str) -> None:
        capacity = self._capacity(routing)
        hand, push = self._hand, self._push
        while True:
            for expires, local, payload in await self._drain(routing):
                message = stamped(expires, payload)
                for name in local.decode("ascii", "replace").split(","):
                    channel = routing + name
                    try:
                        require_valid_channel_name(channel)  # cached: a set lookup
                    except InvalidName:  # not written by this layer: it names no channel
                        self._malformed(
                            "channel", logging.ERROR, "dropped a message for a malformed "
                            "channel %.120r", channel,
                        )  # fmt: skip
                        continue
                    if hand(channel, message):
                        continue
                    try:
                        await push(channel, message, capacity)
                    except ChannelFull:
                        self._full(channel)

    def _full(self, channel: str) -> None:
        self._counters.dropped_full += 1
        self._dropped += 1
        now = time.monotonic()
        if now - self._warned >= WARN_EVERY:
            log.warning(
                "dropped %d message(s) from other hosts for full channels (the last: %r)",
                self._dropped,
                channel,
            )
            self._warned, self._dropped = now, 0

    async def stop(self) -> None:
        """Cancel the bridges (``close``). A bridge is cancelled while it waits for its inbox
        (its pushes do not suspend): what the Redis half popped for it since goes back to
        Redis with that half's leftovers."""
        tasks = list(self._tasks.values())
        self._tasks.clear()
        for task in tasks:
            task.cancel()
        loop = asyncio.get_running_loop()
        mine = [task for task in tasks if task.get_loop() is loop]  # others' loops are gone
        if mine:
            await asyncio.wait(mine)
