"""The Redis side of this host's process-specific channels: one bridge per inbox, into IPC.

A process-specific channel this host made gets messages over IPC (senders on this host) and
over Redis (senders elsewhere). The Redis layer keeps one inbox list per process (per routing
name, up to ``!``), and a group send puts one entry in it for all of that process's members
(their local parts, comma-separated). A *bridge*, one task per inbox and event loop, drains
that inbox in bulk and hands each entry's message to the IPC half's ``hand_over``, for all of
its members at once (decoded once for them: ``layer.messages.shared``): to the receive of this
instance waiting on each channel, if one is (as IPC hands a message to a receive it wakes),
else held in this process for the next receive there, as IPC holds messages a receive took
ahead. Nothing of it touches the segment: no lock, no shared memory written. A receive on such
a channel then waits on IPC alone, as any IPC receive does. (Until stop 28 every receive also
kept a Redis receive of its own per channel; until issue 23 the bridge pushed what no receive
was waiting for into the channel's IPC queue, and the receive took it out again: two critical
sections per delivery, most of the receiving process's CPU in a fan-out from another host;
docs/layer.md, "Local + Redis".)

Guarantees: a bridge moves its inbox's entries in list order, and what it holds for a channel
comes after what is held already, so each remote sender's order per channel holds (its
messages take no other path); an entry is popped from Redis once and moved once (at most
once); a message keeps the expiry it was sent with (on ``time.monotonic()``'s clock from here
on, checked when it is received); a channel holding ``capacity`` moved messages drops the next,
counted in ``dropped_full`` and logged, as a group send drops for a full member.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Awaitable, Callable

from layer.base import Counters
from layer.exceptions import InvalidName
from layer.flow import remember
from layer.ipc.inbox import PARTS_CACHE
from layer.logs import Throttled
from layer.messages import Message, shared
from layer.names import require_valid_channel_name

log = logging.getLogger(__name__)

WARN_EVERY = 10.0  # seconds between log lines about messages dropped on full channels

Drain = Callable[[str], Awaitable[list[tuple[int, bytes, bytes]]]]
# To the receive waiting on each channel or held for its next (expiry on time.monotonic()'s
# clock, capacity); returns the channels that hold ``capacity`` already.
HandOver = Callable[[list[str], bytes | Message, float, int], list[str]]


class Bridges:
    """This instance's bridges, per inbox routing name (one event loop's: they are its tasks)."""

    def __init__(
        self,
        drain: Drain,
        hand_over: HandOver,
        capacity: Callable[[str], int],
        counters: Counters,
    ) -> None:
        self._drain = drain
        self._hand_over = hand_over
        self._capacity = capacity
        self._counters = counters
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._lock = threading.Lock()
        self._dropped = 0  # not yet logged
        self._malformed = Throttled(log)  # forged entries: a few lines, not one each
        self._warned = 0.0

    def ensure(self, routing: str) -> None:
        """Have a bridge for inbox ``routing`` in a running loop: this one, unless another
        loop (thread) runs one, which serves this loop's receives as well, through IPC.
        ``async_to_sync`` may run each call in a fresh loop: a bridge of a loop no longer
        running is replaced. (Cheap: a receive calls it; ``get_running_loop`` is not.)"""
        if _stale(self._tasks.get(routing)):
            with self._lock:  # two threads' receives at once: one new bridge (else two drain)
                if _stale(self._tasks.get(routing)):
                    loop = asyncio.get_running_loop()
                    self._tasks[routing] = loop.create_task(self._run(routing))

    async def _run(self, routing: str) -> None:
        capacity = self._capacity(routing)
        hand_over = self._hand_over
        members: dict[bytes, list[str]] = {}  # local parts -> their channels, all valid
        while True:
            entries = await self._drain(routing)
            offset = time.monotonic() - time.time()  # an entry's expiry: epoch ms -> monotonic
            for expires, local, payload in entries:
                channels = members.get(local) or self._channels(members, routing, local)
                # A group send's members here: its message decoded once, a copy each receive.
                message = shared(payload) if len(channels) > 1 else payload
                for channel in hand_over(channels, message, expires / 1000 + offset, capacity):
                    self._full(channel)

    def _channels(self, members: dict[bytes, list[str]], routing: str, local: bytes) -> list[str]:
        """The channels an entry's local parts name (remembered in ``members`` when they all
        are channels'); a name that is no channel's was not written by this layer: logged and
        left out."""
        channels = []
        for name in local.decode("ascii", "replace").split(","):
            channel = routing + name
            try:
                require_valid_channel_name(channel)
            except InvalidName:
                self._malformed(
                    "channel", logging.ERROR, "dropped a message for a malformed channel %.120r",
                    channel,
                )  # fmt: skip
                continue
            channels.append(channel)
        if len(channels) == local.count(b",") + 1:
            remember(members, local, channels, PARTS_CACHE)
        return channels

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
        (its hand-overs do not suspend): what the Redis half popped for it since goes back to
        Redis with that half's leftovers."""
        tasks = list(self._tasks.values())
        self._tasks.clear()
        for task in tasks:
            task.cancel()
        loop = asyncio.get_running_loop()
        mine = [task for task in tasks if task.get_loop() is loop]  # others' loops are gone
        if mine:
            await asyncio.wait(mine)


def _stale(task: asyncio.Task[None] | None) -> bool:
    """No bridge, or one that no running loop will run."""
    return task is None or task.done() or not task.get_loop().is_running()
