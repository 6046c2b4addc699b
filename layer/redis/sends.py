"""One event loop's sends: pipelined under credit, their replies booked when they come.

A send is one Lua call that checks capacity, drops expired heads, pushes and sets the key's
TTL. When the previous reply for a channel showed room for more, the next sends to it are
queued without waiting for their replies (``layer.flow.Credit``: at most ``WINDOW`` ahead, never
past the capacity seen, only on a live connection), so one producer streams at the speed of
batched writes instead of one round trip per message. A group send to a single server is
pipelined the same way (nothing to wait for: a full member is skipped, not raised).
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections import defaultdict
from collections.abc import Awaitable
from typing import Any

from layer.base import Counters
from layer.exceptions import ChannelFull
from layer.flow import Credit
from layer.redis.connection import Pipe
from layer.redis.scripts import GROUP_SEND

log = logging.getLogger("layer.redis.layer")

WINDOW = 256  # sends queued ahead of their replies, per channel; group sends, per loop


class Sends:
    """Send credit per channel key, and the replies of one event loop's sends not yet booked."""

    def __init__(self, counters: Counters) -> None:
        self.credit = Credit(WINDOW)
        self._counters = counters
        self._inflight: defaultdict[str, int] = defaultdict(int)
        self._group_sends = 0  # group sends returned to their callers, replies not yet booked
        self._appended: asyncio.Future[Any] | None = None  # the last unchecked send's RPUSH
        self._appended_count = [0]  # messages it carries

    def push(
        self,
        pipe: Pipe,
        channel: str,
        key: str,
        entry: bytes,
        now_ms: int,
        capacity: int,
        ttl_ms: int,
    ) -> Awaitable[None] | None:
        """Push ``entry`` onto ``key``: queued while credit lasts, else checked. Returns what
        the send must await, if anything (no coroutine on the streaming path)."""
        self._inflight[key] += 1
        if pipe.healthy() and self.credit.take(key):  # the last reply showed room: don't wait
            sent = pipe.append(key, ttl_ms, entry)
            if sent is self._appended:  # joined the RPUSH queued just before (Pipe.append)
                self._appended_count[0] += 1
            else:  # its reply is booked once, for every entry it carries
                self._appended, self._appended_count = sent, [1]
                sent.add_done_callback(
                    functools.partial(self._pushed, key, capacity, self._appended_count)
                )
            return pipe.drain() if pipe.congested() else None
        reply = pipe.push(key, now_ms, capacity, ttl_ms, entry)
        reply.add_done_callback(functools.partial(self._pushed, key, capacity, [1]))
        return self._checked(reply, channel, capacity)

    @staticmethod
    async def _checked(reply: asyncio.Future[Any], channel: str, capacity: int) -> None:
        length, _ = await reply
        if length < 0:
            raise ChannelFull(f"channel {channel!r} is at its capacity of {capacity}")

    def _pushed(
        self, key: str, capacity: int, count: list[int], reply: asyncio.Future[Any]
    ) -> None:
        """Book the reply of a push (``count[0]`` messages): expired heads dropped, and how
        far ahead later sends may go."""
        left = self._inflight[key] - count[0]
        if left:
            self._inflight[key] = left
        else:
            del self._inflight[key]
        if reply.cancelled() or reply.exception() is not None:
            self.credit.revoke(key)
            return
        result = reply.result()
        if isinstance(result, int):  # an unchecked append: its length only
            length = result
        else:
            length, expired = result
            self._counters.expired += expired
        self.credit.grant(key, capacity - length - left if length >= 0 else 0)

    async def group_send(
        self, pipe: Pipe, group: str, keys: tuple[str, ...], args: tuple[Any, ...]
    ) -> tuple[int, int]:
        """A group send whose members' lists are all on the group's server: one call, not
        waited for while fewer than ``WINDOW`` are (its outcome is booked when it comes)."""
        sent = pipe.script(GROUP_SEND, keys, args)
        if pipe.healthy() and self._group_sends < WINDOW:
            self._group_sends += 1
            sent.add_done_callback(functools.partial(self._group_sent, group))
            if pipe.congested():
                await pipe.drain()
            return 0, 0
        delivered, dropped, expired = await sent
        self._counters.expired += expired
        return delivered, dropped

    def _group_sent(self, group: str, reply: asyncio.Future[Any]) -> None:
        self._group_sends -= 1
        if reply.cancelled():
            return
        if (exc := reply.exception()) is not None:
            log.warning("group_send(%r) failed after it returned: %s", group, exc)
            return
        delivered, dropped, expired = reply.result()
        counters = self._counters
        counters.sent += delivered
        counters.dropped_full += dropped
        counters.expired += expired
