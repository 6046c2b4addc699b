"""Messages a receive took ahead: later receives in this process get them without the lock.

A receive that finds messages takes up to ``PREFETCH`` more in the same critical section: on a
process-specific channel (``name!local``: only this process receives it) always, on a shared
channel only for a receiver that keeps receiving (its previous receive on that channel here was
within ``STREAMING``), so a one-off receive takes only what it returns and nothing is held away
from the other processes receiving on that channel. A shared channel's held messages that nobody
here received for ``RETURN_DELAY`` go back to the front of the channel, as do those held at
``close()``. The rules and constants are the Redis layer's (``layer.base``, docs/redis.md).
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable

from layer.base import PREFETCH, RETURN_DELAY, STREAMING, Counters
from layer.names import process_specific

PRUNE_EVERY = 5.0  # seconds between sweeps of expired messages held for channels nobody receives
_RECEIVES_KEPT = 10_000  # shared channels whose last receive is remembered (then forgotten)
_NEVER = float("-inf")

Held = list[tuple[bytes, float]]  # payloads with their expiry (time.monotonic()), oldest first


class TakeAhead:
    """One layer instance's held messages, per channel, and when to send them back."""

    def __init__(self, counters: Counters, send_back: Callable[[dict[str, Held]], None]) -> None:
        self.held: dict[str, deque[tuple[bytes, float]]] = {}  # only channels holding some
        self._counters = counters
        self._send_back = send_back
        self._received: dict[str, float] = {}  # shared channel -> its last receive here
        self._streaming: set[str] = set()  # shared channels whose last receive kept receiving
        self._timer: asyncio.TimerHandle | None = None
        self._timer_loop: asyncio.AbstractEventLoop | None = None
        self._pruned = time.monotonic()

    def take(self, channel: str) -> bytes | None:
        """The oldest unexpired message held for ``channel``; expired ones are dropped and
        counted."""
        held = self.held.get(channel)
        if held is None:
            return None
        now = time.monotonic()
        if not process_specific(channel):
            self._received[channel] = now
        payload: bytes | None = None
        while held:
            payload, expires = held.popleft()
            if expires > now:
                break
            self._counters.expired += 1
            payload = None
        if not held:
            del self.held[channel]
        return payload

    def extra(self, channel: str, now: float, loop: asyncio.AbstractEventLoop) -> int:
        """A receive on ``channel`` goes to the segment: how many it may take ahead."""
        if self._timer_loop is not loop and self._timer_loop is not None:
            self._adopt(loop)
        if process_specific(channel):
            return PREFETCH
        if len(self._received) >= _RECEIVES_KEPT:
            self._received.clear()
            self._streaming.clear()
        last = self._received.get(channel, _NEVER)
        self._received[channel] = now
        if now - last < STREAMING:
            self._streaming.add(channel)
            return PREFETCH
        self._streaming.discard(channel)
        return 0

    def waiting_extra(self, channel: str) -> int:
        """How many a wake delivering to ``channel``'s waiting receives may take ahead."""
        return PREFETCH if process_specific(channel) or channel in self._streaming else 0

    def keep(self, channel: str, items: Held, loop: asyncio.AbstractEventLoop) -> None:
        """Hold messages taken ahead (newer than any held already)."""
        held = self.held.get(channel)
        if held is None:
            self.held[channel] = deque(items)
        else:
            held.extend(items)
        now = time.monotonic()
        if not process_specific(channel):
            self._received[channel] = now  # the receive they were taken with ended just now
            if self._timer is None:
                self._arm(loop, RETURN_DELAY)
            elif self._timer_loop is not loop:
                self._adopt(loop)
        elif now - self._pruned > PRUNE_EVERY:
            self._prune(now)

    def unreceive(self, channel: str, payload: bytes, expires: float) -> bool:
        """A cancelled receive's message goes before those held for ``channel``, if any."""
        held = self.held.get(channel)
        if held is None:
            return False
        held.appendleft((payload, expires))
        return True

    def queued(self) -> int:
        return sum(map(len, self.held.values()))

    def clear(self) -> None:
        """Drop everything held (``flush()``)."""
        self.held.clear()
        self._disarm()

    def release(self) -> dict[str, Held]:
        """Stop; return the shared channels' held messages (``close()`` sends them back)."""
        self._disarm()
        shared = {c: list(h) for c, h in self.held.items() if not process_specific(c)}
        self.held.clear()
        return shared

    def _due(self) -> None:
        """Send back the shared channels' messages not received for ``RETURN_DELAY``; look
        again when the next one is due, and not at all once nothing shared is held."""
        self._timer = None
        loop = self._timer_loop
        now = time.monotonic()
        due: dict[str, Held] = {}
        wait: float | None = None
        for channel, held in list(self.held.items()):
            if process_specific(channel):
                continue
            idle = now - self._received.get(channel, _NEVER)
            if idle >= RETURN_DELAY:
                due[channel] = list(held)
                del self.held[channel]
            else:
                wait = min(wait if wait is not None else RETURN_DELAY, RETURN_DELAY - idle)
        if wait is not None and loop is not None:
            self._arm(loop, wait)
        if due:
            self._send_back(due)

    def _adopt(self, loop: asyncio.AbstractEventLoop) -> None:
        """The timer's loop closed (``async_to_sync`` may run each call in a fresh loop): the
        loop receiving now looks after the held messages instead."""
        if self._timer_loop is not None and self._timer_loop.is_closed():
            self._timer = None
            self._timer_loop = None
            if any(not process_specific(c) for c in self.held):
                self._arm(loop, RETURN_DELAY)

    def _arm(self, loop: asyncio.AbstractEventLoop, delay: float) -> None:
        self._timer_loop = loop
        self._timer = loop.call_later(delay, self._due)

    def _disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer = None
        self._timer_loop = None

    def _prune(self, now: float) -> None:
        """Drop expired messages held for process-specific channels nobody receives on any
        more (a consumer gone mid-stream), so they do not pile up in a long-lived process."""
        self._pruned = now
        for channel, held in list(self.held.items()):
            kept = deque(item for item in held if item[1] > now)
            if len(kept) != len(held):
                self._counters.expired += len(held) - len(kept)
                if kept:
                    self.held[channel] = kept
                else:
                    del self.held[channel]
