"""Messages handed to this instance's receives without a trip through the segment: a message
from another host (``layer.local``'s bridge: ``hand_over``), and the message a cancelled receive
had already been handed (``give_back``). Each goes to a receive waiting here, else is held as
messages taken ahead are (``ahead.py``), else goes back to the front of its channel's queue.
Order: what is held for a channel is looked at under the same mutex as a receive's wait
(``IPCChannelLayer._pop``), so a hand-over never lands behind a receive that waits already.
"""

from __future__ import annotations

import asyncio
import threading
import time
from typing import TYPE_CHECKING, cast

from layer.base import Counters
from layer.exceptions import ChannelFull
from layer.flow import hand
from layer.ipc.ahead import TakeAhead
from layer.ipc.doorbell import Wakes
from layer.ipc.journal import Lock
from layer.ipc.layout import NIL
from layer.ipc.queues import Queues
from layer.ipc.table import Keys
from layer.messages import Message, own

if TYPE_CHECKING:
    from layer.ipc.receivers import Receivers  # which makes a Handing for itself


class Handing:
    """Hands messages to this instance's receives (see the module docstring)."""

    def __init__(
        self,
        mutex: threading.RLock,
        receivers: Receivers,
        ahead: TakeAhead,
        lock: Lock,
        queues: Queues,
        keys: Keys,
        wakes: Wakes,
        counters: Counters,
        expiry: float,
    ) -> None:
        self._mutex = mutex
        self._receivers = receivers
        self._ahead = ahead
        self._lock = lock
        self._queues = queues
        self._keys = keys
        self._wakes = wakes
        self._counters = counters
        self._expiry = expiry

    def to_waiting(self, channel: str, payload: bytes | Message) -> bool:
        """Give ``payload`` to a receive of this instance waiting on ``channel``, if any: the
        future a wake would complete (its node stays registered for the next receive). False
        when none waits."""
        waiting = self._receivers.local.get(channel)
        return waiting is not None and hand(waiting, payload)

    def hand_over(
        self, channels: list[str], payload: bytes | Message, expires: float, capacity: int
    ) -> list[str]:
        """A message for this instance's process-specific ``channels`` (one, or a group send's
        members here) that came another way (layer.local's bridge: from other hosts, over
        Redis) goes to the receive waiting on each here, else is held for its next one as a
        message taken ahead is: no lock, nothing written to the segment. A message decoded
        once for them all (``shared``) is handed as it is: each receive takes its own copy.
        ``expires`` is on ``time.monotonic()``'s clock; an expired message is dropped and
        counted. Returns the channels that hold ``capacity`` messages already (the caller
        drops their copy)."""
        if expires <= time.monotonic():
            self._counters.expired += len(channels)
            return []
        full = []
        item, hold = (payload, expires), self._ahead.hold  # one item for all the members held
        with self._mutex:
            for channel in channels:
                if not (self._give(channel, payload, expires) or hold(channel, item, capacity)):
                    full.append(channel)
        return full

    def deliver(self, channel: str, items: list[tuple[bytes | Message, float]]) -> None:
        """Messages taken off this instance's inbox for ``channel`` (``inbox.py``, under the
        mutex), in order: to the receives waiting on it here, the rest held for its next
        receives, however many (the inbox's capacity bounded them in the segment; they are
        this process's now)."""
        given = 0
        while given < len(items) and self._give(channel, *items[given]):
            given += 1
        if given < len(items):
            self._ahead.keep(channel, items[given:] if given else items)

    def _give(self, channel: str, payload: bytes | Message, expires: float) -> bool:
        """To the first receive waiting on ``channel`` here (the caller holds the mutex), in
        its own loop if that is another thread's, its own copy of a shared message; False when
        none waits."""
        waiting = self._receivers.local.get(channel)
        while waiting:
            waiter = waiting.popleft()
            if not waiting:  # a receive coming next goes to the inbox, not behind a waiter
                del self._receivers.local[channel]
            if waiter.done():
                continue
            payload = own(payload)
            loop = waiter.get_loop()
            if loop is asyncio.get_running_loop():
                waiter.set_result(payload)
            else:  # a receive in another thread's loop: its loop completes the future
                try:
                    loop.call_soon_threadsafe(self._hand_late, channel, waiter, payload, expires)
                except RuntimeError:  # that loop is closed: its receive never resumes
                    continue
            return True
        return False

    def _hand_late(
        self,
        channel: str,
        waiter: asyncio.Future[bytes | Message],
        payload: bytes | Message,
        expires: float,
    ) -> None:
        """``hand_over`` across threads, in the waiter's loop: a waiter cancelled meanwhile
        leaves the message to the next receive, before those held since."""
        if not waiter.done():
            waiter.set_result(payload)
            return
        with self._mutex:
            if not self.to_waiting(channel, payload):
                self._ahead.unreceive(channel, payload, expires)

    def give_back(self, channel: str, payload: bytes | Message) -> None:
        """A cancelled receive had already been handed ``payload``: the next waiter gets it
        (under the mutex: receives of other threads' loops may wait on the same channel)."""
        with self._mutex:
            if self.to_waiting(channel, payload) or self._receivers.closed:
                return
            self._receivers.drop_idle(channel)
            expires = time.monotonic() + self._expiry
            if self._ahead.unreceive(channel, payload, expires):  # before those taken ahead
                return
            payload = cast(bytes, payload)  # a shared channel's: only inboxes' hold messages
            try:
                with self._lock as j:
                    waker = self._queues.push_front(j, self._keys.of(channel), payload, expires)
            except ChannelFull:
                self._counters.dropped_full += 1
                return
        if waker != NIL:
            self._wakes.ring(waker)
