"""Messages a receive took ahead: later receives in this process get them without the lock.

A receive that finds messages takes up to ``PREFETCH`` more in the same critical section: on a
process-specific channel (``name!local``: only this process receives it) always, on a shared
channel only for a receiver that keeps receiving (its previous receive on that channel here was
within ``STREAMING``), so a one-off receive takes only what it returns. A shared channel's held
messages that nobody here received for ``RETURN_DELAY`` go back to the front of the channel, as
do those held at ``close()`` or at interpreter exit. The rules and constants are every
backend's (``layer.flow``, docs/redis.md).

Sending them back is the job of a thread, not of an event-loop timer: the loop that took them
may be blocked (synchronous code, a full pipe), parked between ``async_to_sync`` calls, or gone
without ``close()``, and a message held by a process that does not serve its loop must not be
held away from the other processes. The thread runs only while a shared channel has messages
held; it and the loop's thread share the segment lock's re-entrant ``mutex``, which also
guards the held messages.
"""

from __future__ import annotations

import atexit
import contextlib
import threading
import time
import weakref
from collections import deque
from collections.abc import Sequence
from typing import cast

from layer.base import Counters
from layer.flow import PREFETCH, Every, Streaming, unexpired
from layer.ipc.doorbell import Ringer
from layer.ipc.journal import Journal, Lock
from layer.ipc.queues import Queues
from layer.ipc.table import make_key
from layer.messages import Message, own
from layer.names import process_specific

# A payload with its expiry (time.monotonic()); a process-specific channel's may be a fan-out's
# message decoded once for all its members here (``shared``), never a shared channel's.
Held = tuple[bytes | Message, float]


class TakeAhead:
    """One layer instance's held messages, per channel, and the thread that sends back those
    of shared channels nobody here receives."""

    def __init__(self, counters: Counters, lock: Lock, queues: Queues, prefix: str) -> None:
        self.held: dict[str, deque[Held]] = {}  # only channels holding some, oldest first
        self._counters = counters
        self._lock = lock
        self._mutex = lock.mutex
        self._queues = queues
        self.prefix = prefix
        self._receives = Streaming()  # shared channels' last receives here
        self._returner: threading.Thread | None = None
        self._closing = threading.Condition(lock.mutex)  # wakes the returner at close()
        self._closed = False
        self._sweeps = Every(time.monotonic())
        _OPEN.add(self)

    def take(self, channel: str) -> bytes | Message | None:
        """The oldest unexpired message held for ``channel`` (a copy of a shared one); expired
        ones are dropped and counted."""
        with self._mutex:
            held = self.held.get(channel)
            if held is None:  # sent back since the caller looked
                return None
            now = time.monotonic()
            if not process_specific(channel):
                self._receives.touch(channel, now)
            payload: bytes | Message | None = None
            while held:
                payload, expires = held.popleft()
                if expires > now:
                    break
                self._counters.expired += 1
                payload = None
            if not held:
                del self.held[channel]
            return None if payload is None else own(payload)

    def extra(self, channel: str, now: float) -> int:
        """A receive on ``channel`` goes to the segment: how many it may take ahead."""
        if process_specific(channel) or self._receives.received(channel, now):
            return PREFETCH
        return 0

    def waiting_extra(self, channel: str) -> int:
        """How many a wake delivering to ``channel``'s waiting receives may take ahead."""
        return PREFETCH if process_specific(channel) or self._receives.streaming(channel) else 0

    def keep(self, channel: str, items: Sequence[Held]) -> None:
        """Hold messages taken ahead (newer than any held already)."""
        with self._mutex:
            held = self.held.get(channel)
            if held is None:
                self.held[channel] = deque(items)
            else:
                held.extend(items)
            now = time.monotonic()
            if not process_specific(channel):
                self._receives.touch(channel, now)  # the receive they were taken with ended now
                if self._returner is None and not self._closed:
                    self._returner = threading.Thread(
                        target=self._return_idle, name="ipc-take-ahead", daemon=True
                    )
                    self._returner.start()
            else:
                self.sweep(now)

    def sweep(self, now: float) -> None:
        """Drop expired messages held for process-specific channels nobody receives on any
        more (a consumer gone mid-stream), at most every ``PRUNE_EVERY``, so they do not pile up
        in a long-lived process. The caller holds ``mutex``."""
        if self._sweeps.due(now):
            self._prune(now)

    def hold(self, channel: str, item: Held, capacity: int) -> bool:
        """Hold a message that reached this process without the segment (layer.local's
        bridge) for a process-specific ``channel``, after those held; False if ``capacity``
        are held already. The caller holds ``mutex``."""
        held = self.held.get(channel)
        if held is None:
            self.held[channel] = deque((item,))
        elif len(held) < capacity:
            held.append(item)
        else:
            return False
        return True

    def unreceive(self, channel: str, payload: bytes | Message, expires: float) -> bool:
        """A cancelled receive's message goes before those held for ``channel``: if any are,
        or always on a process-specific channel (only this process receives it, and messages
        handed over from elsewhere are held after it: back in the segment it would come after
        them). False: the caller puts it back at the front of the channel."""
        with self._mutex:
            held = self.held.get(channel)
            if held is None:
                if not process_specific(channel):
                    return False
                held = self.held[channel] = deque()
            held.appendleft((payload, expires))
            return True

    def queued(self) -> int:
        with self._mutex:
            return sum(map(len, self.held.values()))

    def returning(self) -> bool:
        """Whether the thread sending back shared channels' held messages is running."""
        return self._returner is not None

    def clear(self) -> None:
        """Drop everything held (``flush()``); the returner, finding nothing, stops."""
        with self._mutex:
            self.held.clear()

    def close(self) -> list[int]:
        """Stop; send the shared channels' held messages back. Returns the wakers to ring."""
        with self._lock as j:
            self._closed = True
            self._closing.notify_all()
            _OPEN.discard(self)
            wake = self._send_back(j, [c for c in self.held if not process_specific(c)])
            self.held.clear()
        return wake

    def _send_back(self, j: Journal, channels: list[str]) -> list[int]:
        """Put the messages held for ``channels`` back at their fronts, in their order (the
        caller holds the lock: nothing here can take one of them meanwhile)."""
        wake: list[int] = []
        now = time.monotonic()
        for channel in channels:
            items = cast(list[tuple[bytes, float]], list(self.held.pop(channel)))  # see Held
            self._queues.push_front_run(j, make_key(channel), items, now, wake)
        return wake

    def _return_idle(self) -> None:
        """The returner: send back the shared channels' messages not received for
        ``RETURN_DELAY``, whatever this process's event loop is doing; sleep until the next one
        is due, and stop once no shared channel holds any (an idle process has no thread)."""
        ringer = Ringer(self.prefix)
        try:
            with self._mutex:
                while not self._closed:
                    now = time.monotonic()
                    due: list[str] = []
                    wait: float | None = None
                    for channel in self.held:
                        if process_specific(channel):
                            continue
                        left = self._receives.due(channel, now)
                        if not left:
                            due.append(channel)
                        else:
                            wait = left if wait is None else min(wait, left)
                    if wait is None:  # stopping: said before the messages are visible again
                        self._returner = None
                    if due:
                        with self._lock as j:
                            wake = self._send_back(j, due)
                        for waker in set(wake):
                            ringer.ring(waker)
                    if wait is None:
                        return
                    self._closing.wait(wait)
        finally:
            ringer.close()
            with self._mutex:
                if self._returner is threading.current_thread():  # it failed: a keep restarts
                    self._returner = None

    def _prune(self, now: float) -> None:
        for channel, held in list(self.held.items()):
            kept, dropped = unexpired(held, now)
            if dropped:
                self._counters.expired += dropped
                if kept:
                    self.held[channel] = kept
                else:
                    del self.held[channel]


_OPEN: weakref.WeakSet[TakeAhead] = weakref.WeakSet()


@atexit.register
def _send_back_at_exit() -> None:
    """The interpreter exits with layers never closed: their shared channels' held messages
    go back (a killed process loses them; at most once)."""
    for ahead in list(_OPEN):
        with contextlib.suppress(Exception):  # e.g. a segment closed under the layer
            wake = ahead.close()
            ringer = Ringer(ahead.prefix)
            for waker in set(wake):
                ringer.ring(waker)
            ringer.close()
