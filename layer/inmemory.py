"""In-memory backend: one process, protocol server and worker together (``make run``).

Each channel is a deque of ``(expires_at, payload)`` plus a deque of waiting receivers. A send
to a channel with a waiter hands the payload straight to it, so the queue and the waiters are
never both non-empty. Payloads are msgpack bytes, so a sender mutating its dict afterwards never
changes what is received (``send_trusted`` hands its message object over as it is: its caller
promises not to touch it again). All expiries of a channel share one duration, so expired
messages are always at the head and pruning is O(1) amortised. Channels nobody reads again (a
crashed client's reply channel) and lapsed group members are swept at most once per ``expiry``,
so memory does not grow with abandoned names.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from typing import Any

from layer.base import BaseChannelLayer, StorageCounts
from layer.exceptions import ChannelFull
from layer.flow import hand, handed
from layer.messages import Message

Payload = bytes | Message  # a dict only from send_trusted, which hands the object over


class _Channel:
    __slots__ = ("queue", "waiters")

    def __init__(self) -> None:
        self.queue: deque[tuple[float, Payload]] = deque()
        self.waiters: deque[asyncio.Future[Payload]] = deque()


class InMemoryChannelLayer(BaseChannelLayer):
    """Channel layer inside one process; it cannot cross processes (use IPC or Redis)."""

    cross_process = False
    hands_over_objects = True

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self._channels: dict[str, _Channel] = {}
        self._groups: dict[str, dict[str, float]] = {}
        self._next_sweep = time.monotonic() + self.expiry

    async def _push(self, channel: str, payload: bytes, capacity: int) -> None:
        self._put(channel, payload, capacity)

    def _store_trusted(self, channel: str, message: Message, capacity: int) -> bool:
        self._put(channel, message, capacity)  # one process: a trusted message needs no copy
        return True

    def _put(self, channel: str, payload: Payload, capacity: int) -> None:
        now = time.monotonic()
        if now >= self._next_sweep:
            self._sweep()
        chan = self._channels.get(channel)
        if chan is None:
            chan = self._channels[channel] = _Channel()
        if chan.waiters and hand(chan.waiters, payload):
            return
        queue = chan.queue
        if len(queue) >= capacity:
            self._prune(queue, now)
            if len(queue) >= capacity:
                raise ChannelFull(f"channel {channel!r} is at its capacity of {capacity}")
        queue.append((now + self.expiry, payload))

    def _prune(self, queue: deque[tuple[float, Payload]], now: float) -> None:
        while queue and queue[0][0] <= now:
            queue.popleft()
            self.counters.expired += 1

    def _sweep(self) -> None:
        """Drop expired messages everywhere, then empty channels and lapsed members."""
        now = time.monotonic()
        self._next_sweep = now + self.expiry
        for name, chan in list(self._channels.items()):
            self._prune(chan.queue, now)
            if not chan.queue and not chan.waiters:
                del self._channels[name]
        for group, members in list(self._groups.items()):
            for channel in [c for c, expires_at in members.items() if expires_at <= now]:
                del members[channel]
            if not members:
                del self._groups[group]

    def _ready(self, channel: str) -> Payload | None:
        chan = self._channels.get(channel)
        if chan is None or not chan.queue:
            return None
        queue = chan.queue
        if queue[0][0] <= time.monotonic():
            self._prune(queue, time.monotonic())
            if not queue:
                return None
        payload = queue.popleft()[1]
        if not queue and not chan.waiters:
            del self._channels[channel]
        return payload

    async def _pop(self, channel: str) -> Payload:
        payload = self._ready(channel)
        if payload is not None:
            return payload
        chan = self._channels.get(channel)
        if chan is None:
            chan = self._channels[channel] = _Channel()
        waiter: asyncio.Future[Payload] = asyncio.get_running_loop().create_future()
        chan.waiters.append(waiter)
        try:
            return await waiter
        except asyncio.CancelledError:
            payload = handed(waiter, chan.waiters)
            if payload is not None:
                self._requeue(channel, chan, payload)
            if not chan.queue and not chan.waiters and self._channels.get(channel) is chan:
                del self._channels[channel]
            raise

    def _requeue(self, channel: str, chan: _Channel, payload: Payload) -> None:
        """A cancelled receiver already got ``payload``: give it to the next waiter or the head."""
        if hand(chan.waiters, payload):
            return
        chan.queue.appendleft((time.monotonic() + self.expiry, payload))
        self._channels.setdefault(channel, chan)

    async def _group_add(self, group: str, channel: str) -> None:
        self._groups.setdefault(group, {})[channel] = time.monotonic() + self.group_expiry

    async def _group_discard(self, group: str, channel: str) -> None:
        members = self._groups.get(group)
        if members is not None:
            members.pop(channel, None)
            if not members:
                del self._groups[group]

    async def _group_send(self, group: str, payload: bytes) -> tuple[int, int]:
        members = self._groups.get(group)
        if not members:
            return 0, 0
        now = time.monotonic()
        delivered = dropped = 0
        for channel, expires_at in list(members.items()):
            if expires_at <= now:
                # pop, not del: a _put above may have run a sweep that dropped it already
                members.pop(channel, None)
                continue
            try:
                self._put(channel, payload, self.get_capacity(channel))
                delivered += 1
            except ChannelFull:
                dropped += 1
        if not members and self._groups.get(group) is members:
            del self._groups[group]
        return delivered, dropped

    async def _flush(self) -> None:
        for channel, chan in list(self._channels.items()):
            chan.queue.clear()
            if not chan.waiters:
                del self._channels[channel]
        self._groups.clear()

    async def _storage_counts(self) -> StorageCounts:
        queued = sum(len(chan.queue) for chan in self._channels.values())
        return StorageCounts(queued=queued, channels=len(self._channels), groups=len(self._groups))
