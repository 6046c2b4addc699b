"""What one shard's receiver holds in this process: per channel, the entries popped but not yet
received, and the receives waiting for them.

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

from layer.flow import RETURN_DELAY, Streaming, hand, handed, unexpired
from layer.messages import Message
from layer.redis.entries import Popped, make_entry, split_entry
from layer.redis.shard_errors import ShardUnavailable

_IMMUTABLE = frozenset({str, bytes, int, float, bool, type(None)})


class Mailbox:
    """Local state of one channel: entries popped but not yet received, and waiting receivers."""

    __slots__ = ("buffer", "channel", "inbox", "key", "returning", "waiters")

    def __init__(self, channel: str, key: str, inbox: bool) -> None:
        self.channel = channel
        self.key = key  # its list (an inbox is shared by this process's own channels)
        self.inbox = inbox
        self.buffer: deque[tuple[Popped, int]] = deque()  # (payload, expires_at_ms)
        self.waiters: deque[asyncio.Future[Popped]] = deque()
        self.returning = False


class Drain:
    """A process inbox taken whole by one caller (``Receiver.drain``) instead of per channel:
    entries ``(expires_at_ms, local parts, payload)`` in list order, and the drain waiting."""

    __slots__ = ("entries", "waiter")

    def __init__(self) -> None:
        self.entries: list[tuple[int, bytes, bytes]] = []
        self.waiter: asyncio.Future[None] | None = None

    def keep(self, entries: list[bytes], now: float) -> tuple[int, list[bytes]]:
        """Keep the unexpired ``entries`` and wake the drain; return how many had expired, and
        those not written by this layer (malformed)."""
        expired, malformed = 0, []
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
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(None)
        return expired, malformed


class Mailboxes:
    """One receiver's mailboxes, per channel, and the receives waiting per list key."""

    def __init__(
        self,
        expiry: float,
        on_expired: Callable[[int], None],
        open_payload: Callable[[bytes], Message],
        seal_message: Callable[[Message], bytes],
        send_back: Callable[[str, list[bytes]], None],
    ) -> None:
        self._loop = asyncio.get_running_loop()
        self._expiry = expiry
        self._on_expired = on_expired
        self._open = open_payload
        self._seal = seal_message  # the inverse, for a fan-out message decoded once (shared)
        self._send_back = send_back  # entries for the front of a list, from the receive loop
        self.boxes: dict[str, Mailbox] = {}
        self.waiting: dict[str, int] = {}  # list key -> receives waiting on it
        self.receives = Streaming()  # list keys' last receives here, which keep receiving
        self.drains: dict[str, Drain] = {}  # inbox key -> its drain (all its entries go there)

    def box(self, channel: str, key: str) -> Mailbox:
        box = self.boxes.get(channel)
        if box is None:
            box = self.boxes[channel] = Mailbox(channel, key, key.endswith("!"))
        return box

    def deliver(self, key: str, routing: str, entries: list[bytes]) -> list[bytes]:
        """Hand ``entries`` popped from list ``key`` to the receives waiting on their channels
        (or to the drain of ``key``), else keep them for the next receive; expired ones are
        dropped and counted. Returns the entries this layer did not write (malformed)."""
        now = time.time() * 1000
        drain = self.drains.get(key)
        if drain is not None:  # taken whole by its caller (Receiver.drain)
            expired, malformed = drain.keep(entries, now)
        else:
            expired, malformed = self._to_boxes(key, routing, entries, now)
        if expired:
            self._on_expired(expired)
        return malformed

    def _to_boxes(
        self, key: str, routing: str, entries: list[bytes], now: float
    ) -> tuple[int, list[bytes]]:
        expired, malformed = 0, []
        inbox = routing.endswith("!")
        boxes_of: dict[bytes, list[Mailbox]] = {}  # a group's entries repeat one local part
        for entry in entries:
            try:
                expires_at, local, payload = split_entry(entry)
                if expires_at <= now:
                    expired += 1
                    continue
                boxes = boxes_of.get(local)
                if boxes is None:
                    names = local.decode().split(",") if inbox else ("",)
                    boxes = boxes_of[local] = [self.box(routing + n, key) for n in names]
            except ValueError:
                malformed.append(entry)
                continue
            shared = self.shared(payload) if len(boxes) > 1 else payload
            for box in boxes:
                if box.waiters:
                    self.give(box, shared, expires=expires_at)
                else:  # nobody waiting yet (a busy receiver): keep it for the next receive
                    box.buffer.append((shared, expires_at))
                if not inbox:
                    self.settle(box)
        return expired, malformed

    def take(self, channel: str) -> Popped | None:
        """An entry already popped for ``channel``, if any (the fast path of a receive)."""
        box = self.boxes.get(channel)
        return None if box is None or not box.buffer else self.take_from(box)

    def take_from(self, box: Mailbox) -> Popped | None:
        buffer = box.buffer
        if not buffer:
            return None
        if not box.inbox:
            self.receives.touch(box.key, time.monotonic())
        payload, expires_at = buffer.popleft()
        if expires_at <= time.time() * 1000:  # rare: drop every expired head, then look again
            self._on_expired(1)
            return self.take_from(box)
        if not buffer:
            self.settle(box)
        return payload.copy() if type(payload) is dict else payload  # see shared()

    def cancelled(self, channel: str, box: Mailbox, waiter: asyncio.Future[Popped]) -> None:
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

    def give(self, box: Mailbox, payload: Popped, front: bool = False, expires: int = 0) -> None:
        """Hand ``payload`` to the first live waiter, else keep it (at the front if requeued)."""
        waiters = box.waiters
        waiting = len(waiters)
        given = hand(waiters, payload.copy() if type(payload) is dict else payload)
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
        if not box.inbox and not box.returning:
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

    def shared(self, payload: bytes) -> Popped:
        """A fan-out entry's payload for all its local members: decoded once when a shallow
        copy of the message is a whole one (every value immutable; each receiver gets its own
        copy, see :meth:`take_from`), else the bytes, decoded by each receive."""
        try:
            message = self._open(payload)
        except Exception:  # undecryptable or malformed: each receive raises, naming its channel
            return payload
        return message if _IMMUTABLE.issuperset(map(type, message.values())) else payload

    def prune(self) -> set[str]:
        """Drop expired entries held for process-specific channels nobody is receiving on,
        and mailboxes left empty; return the list keys still in use."""
        for box in list(self.boxes.values()):
            if box.inbox and not box.waiters:
                box.buffer, dropped = unexpired(box.buffer, time.time() * 1000)
                if dropped:
                    self._on_expired(dropped)
            if not box.waiters and not box.buffer and not box.returning:
                del self.boxes[box.channel]
        self.waiting = {key: n for key, n in self.waiting.items() if n}
        return {box.key for box in self.boxes.values()} | set(self.waiting) | set(self.drains)

    def fail(self, why: str) -> None:
        """The loop is closing: end the receives (and drains) still waiting with
        ``ShardUnavailable(why)``; nothing pops for them any more, and what was popped goes
        back with the leftovers."""
        error = ShardUnavailable(why)
        for box in self.boxes.values():
            while box.waiters:
                waiter = box.waiters.popleft()
                if not waiter.done():
                    waiter.set_exception(error)
        for drain in self.drains.values():
            if drain.waiter is not None and not drain.waiter.done():
                drain.waiter.set_exception(error)
        self.waiting.clear()

    def clear(self) -> None:
        """Forget entries popped but not yet received (``flush()``)."""
        for box in self.boxes.values():
            box.buffer.clear()
        for drain in self.drains.values():
            drain.entries.clear()

    def buffered_keys(self) -> set[str]:
        held = {key for key, drain in self.drains.items() if drain.entries}
        return held | {box.key for box in self.boxes.values() if box.buffer}

    def queued(self) -> int:
        held = sum(len(drain.entries) for drain in self.drains.values())
        return held + sum(len(box.buffer) for box in self.boxes.values())

    def leftovers(self) -> list[tuple[str, list[bytes]]]:
        """Every entry no receive (or drain) has taken, as list entries again, per list key."""
        out = [(box.key, self.entries(box)) for box in self.boxes.values() if box.buffer]
        for key, drain in self.drains.items():
            if drain.entries:
                out.append(
                    (key, [make_entry(at, payload, local) for at, local, payload in drain.entries])
                )
                drain.entries = []
        return out

    def entries(self, box: Mailbox) -> list[bytes]:
        """Empty ``box`` into list entries (an inbox's with their local part)."""
        local = box.channel.partition("!")[2].encode() if box.inbox else b""
        seal = self._seal
        entries = [
            make_entry(expires, payload if isinstance(payload, bytes) else seal(payload), local)
            for payload, expires in box.buffer
        ]
        box.buffer.clear()
        return entries
