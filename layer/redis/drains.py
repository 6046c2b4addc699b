"""An inbox list taken whole by one caller instead of per channel (``Receiver.drain``:
``LocalRedisChannelLayer`` routes the entries on itself, into its host's IPC queues)."""

from __future__ import annotations

import asyncio

from layer.redis.entries import split_entry
from layer.redis.poppers import Loop, wake


class Drain:
    """Entries ``(expires_at_ms, local parts, payload)`` popped for it, in list order, and the
    drain waiting (under the inbox's lock)."""

    __slots__ = ("entries", "owner", "waiter")

    def __init__(self, owner: Loop) -> None:
        self.entries: list[tuple[int, bytes, bytes]] = []
        self.waiter: asyncio.Future[None] | None = None
        self.owner = owner  # the loop of its latest caller: it is popped while that one lives

    def add(self, entries: list[bytes], now: float, loop: Loop, malformed: list[bytes]) -> int:
        """Keep ``entries`` popped (in ``loop``) that have not expired, and wake the drain
        waiting; returns how many had expired (those this layer did not write go to
        ``malformed``)."""
        expired = 0
        for entry in entries:
            try:
                split = split_entry(entry)
            except ValueError:
                malformed.append(entry)
                continue
            if split[0] <= now:
                expired += 1
            else:
                self.entries.append(split)
        if self.waiter is not None:
            wake(self.waiter, loop)
        return expired
