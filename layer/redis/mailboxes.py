"""What one shard's receiver holds in one event loop for shared channels: per channel, the
entries popped but not yet received, and the receives waiting for them. (The process's own
channels, whose inbox every loop of the process shares, are ``inbox.py``'s.)

A popped entry goes to the first receive still waiting on its channel, else it stays in the
channel's mailbox for the next receive (the fast path: no coroutine). A shared channel's entries
that nobody here received for ``RETURN_DELAY`` go back to the front of their list (the rules
of ``layer.flow``); a cancelled receive's entry goes to the next waiting receive or first in
line. An entry keeps the expiry it was written with, and one past it is dropped at delivery.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable

from layer.flow import RETURN_DELAY, Streaming, hand, handed
from layer.redis.entries import make_entry, split_entry
from layer.redis.shard_errors import ShardUnavailable


class Mailbox:
    """Local state of one channel: entries popped but not yet received, and waiting receivers."""

    __slots__ = ("buffer", "channel", "key", "returning", "waiters")

    def __init__(self, channel: str, key: str) -> None:
        self.channel = channel
        self.key = key  # its list
        self.buffer: deque[tuple[bytes, int]] = deque()  # (payload, expires_at_ms)
        self.waiters: deque[asyncio.Future[bytes]] = deque()
        self.returning = False


class Mailboxes:
    """One receiver's mailboxes, per channel, and the receives waiting per list key."""

    def __init__(
        self,
        expiry: float,
        on_expired: Callable[[int], None],
        send_back: Callable[[str, list[bytes]], None],
    ) -> None:
        self._loop = asyncio.get_running_loop()
        self._expiry = expiry
        self._on_expired = on_expired
        self._send_back = send_back  # entries for the front of a list, from the receive loop
        self.boxes: dict[str, Mailbox] = {}
        self.waiting: dict[str, int] = {}  # list key -> receives waiting on it
        self.receives = Streaming()  # list keys' last receives here, which keep receiving

    def box(self, channel: str, key: str) -> Mailbox:
        box = self.boxes.get(channel)
        if box is None:
            box = self.boxes[channel] = Mailbox(channel, key)
        return box

    def deliver(self, key: str, channel: str, entries: list[bytes]) -> list[bytes]:
        """Hand ``entries`` popped from ``channel``'s list ``key`` to the receives waiting
        there, else keep them for the next receive (or send them back, see :meth:`settle`);
        expired ones are dropped and counted. Returns the entries this layer did not write."""
        now = time.time() * 1000
        expired, malformed = 0, []
        box = self.box(channel, key)
        for entry in entries:
            try:
                expires_at, _, payload = split_entry(entry)
            except ValueError:
                malformed.append(entry)
                continue
            if expires_at <= now:
                expired += 1
            elif box.waiters:
                self.give(box, payload, expires=expires_at)
            else:  # nobody waiting yet (a busy receiver): keep it for the next receive
                box.buffer.append((payload, expires_at))
        self.settle(box)
        if expired:
            self._on_expired(expired)
        return malformed

    def take(self, channel: str) -> bytes | None:
        """An entry already popped for ``channel``, if any (the fast path of a receive)."""
        box = self.boxes.get(channel)
        return None if box is None or not box.buffer else self.take_from(box)

    def take_from(self, box: Mailbox) -> bytes | None:
        buffer = box.buffer
        if not buffer:
            return None
        self.receives.touch(box.key, time.monotonic())
        payload, expires_at = buffer.popleft()
        if expires_at <= time.time() * 1000:  # rare: drop every expired head, then look again
            self._on_expired(1)
            return self.take_from(box)
        if not buffer:
            self.settle(box)
        return payload

    def cancelled(self, channel: str, box: Mailbox, waiter: asyncio.Future[bytes]) -> None:
        """The receive waiting on ``waiter`` in ``box`` was cancelled."""
        waiting = len(box.waiters)
        payload = handed(waiter, box.waiters)
        if payload is not None:
            # Taken for us but we are gone: first in line again (in the live mailbox).
            box = self.boxes.setdefault(channel, box)
            self.give(box, payload, front=True)
        else:
            self.waiting[box.key] -= waiting - len(box.waiters)
        self.settle(box)

    def give(self, box: Mailbox, payload: bytes, front: bool = False, expires: int = 0) -> None:
        """Hand ``payload`` to the first live waiter, else keep it (at the front if requeued)."""
        waiters = box.waiters
        waiting = len(waiters)
        given = hand(waiters, payload)
        self.waiting[box.key] -= waiting - len(waiters)
        if given:
            return
        expires = expires or int((time.time() + self._expiry) * 1000)
        if front:
            box.buffer.appendleft((payload, expires))
        else:
            box.buffer.append((payload, expires))

    def settle(self, box: Mailbox) -> None:
        """Send a shared channel's entries that nobody here waits for back, soon.

        Empty mailboxes stay until :meth:`prune` (a receiver that keeps receiving reuses one)."""
        if box.waiters or not box.buffer:
            return
        if not box.returning:
            box.returning = True
            self._loop.call_later(RETURN_DELAY, self._return, box)

    def _return(self, box: Mailbox) -> None:
        box.returning = False
        if box.waiters or not box.buffer:
            return
        left = self.receives.due(box.key, time.monotonic())
        if left:  # still being received from: look again later
            box.returning = True
            self._loop.call_later(left, self._return, box)
            return
        self._send_back(box.key, self.entries(box))

    def prune(self) -> set[str]:
        """Drop mailboxes left empty; return the list keys still in use."""
        for box in list(self.boxes.values()):
            if not box.waiters and not box.buffer and not box.returning:
                del self.boxes[box.channel]
        self.waiting = {key: n for key, n in self.waiting.items() if n}
        return {box.key for box in self.boxes.values()} | set(self.waiting)

    def fail(self, why: str) -> None:
        """The loop is closing: end the receives still waiting with
        ``ShardUnavailable(why)``; nothing pops for them any more, and what was popped goes
        back with the leftovers."""
        error = ShardUnavailable(why)
        for box in self.boxes.values():
            while box.waiters:
                waiter = box.waiters.popleft()
                if not waiter.done():
                    waiter.set_exception(error)
        self.waiting.clear()

    def clear(self) -> None:
        """Forget entries popped but not yet received (``flush()``)."""
        for box in self.boxes.values():
            box.buffer.clear()

    def buffered_keys(self) -> set[str]:
        return {box.key for box in self.boxes.values() if box.buffer}

    def queued(self) -> int:
        return sum(len(box.buffer) for box in self.boxes.values())

    def leftovers(self) -> list[tuple[str, list[bytes]]]:
        """Every entry no receive has taken, as list entries again, per list key."""
        return [(box.key, self.entries(box)) for box in self.boxes.values() if box.buffer]

    def entries(self, box: Mailbox) -> list[bytes]:
        """Empty ``box`` into list entries."""
        entries = [make_entry(expires, payload) for payload, expires in box.buffer]
        box.buffer.clear()
        return entries
