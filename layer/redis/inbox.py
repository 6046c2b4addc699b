"""This process's own channels on one shard, shared by every event loop of the process.

All of a process's ``name!…`` channels share one inbox list in Redis (docs/redis.md), whichever
thread's event loop receives on them (threaded WSGI Django: ``async_to_sync`` per request).
What was popped from it is therefore kept here, per layer and shard, not per loop: a loop that
pops entries for a channel another loop waits on wakes that receive (``call_soon_threadsafe``)
and the receive takes the entry itself, under the lock; an entry handed straight to a receive
of the popping loop and then cancelled goes back first in line. Only one loop at a time pops
each inbox list, so entries arrive here in list order (which one: poppers.py); an inbox taken
whole by one caller is a drain (drains.py). A loop that ends leaves what it popped here, for
this process's next receive (no push back: nothing another process could receive, and no order
to break).
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import deque
from collections.abc import Callable

from layer.messages import Message, whole_when_shallow
from layer.redis.drains import Drain
from layer.redis.entries import Popped, make_entry, split_entry
from layer.redis.poppers import Loop, Poppers, wake
from layer.redis.shard_errors import ShardUnavailable

Waiter = asyncio.Future[Popped | None]  # None: "look again" (woken from another loop)


class OwnBox:
    """One own channel: entries popped but not yet received, and its receives waiting."""

    __slots__ = ("buffer", "channel", "key", "waiters")

    def __init__(self, channel: str, key: str) -> None:
        self.channel = channel
        self.key = key
        self.buffer: deque[tuple[Popped, int]] = deque()  # (payload, expires_at_ms)
        self.waiters: deque[Waiter] = deque()


class Inbox:
    """Own channels' entries and receives of one shard, for all event loops (lock-protected)."""

    def __init__(
        self,
        expiry: float,
        on_expired: Callable[[int], None],
        open_payload: Callable[[bytes], Message],
        seal_message: Callable[[Message], bytes],
        key_prefix: str,
    ) -> None:
        self._key_prefix = len(key_prefix)  # a list key is it and the routing name
        self.lock = threading.Lock()
        self._expiry = expiry
        self._on_expired = on_expired
        self._open = open_payload
        self._seal = seal_message
        self.boxes: dict[str, OwnBox] = {}
        self.waiting: dict[str, dict[Loop, int]] = {}  # list key -> receives waiting, per loop
        self.drains: dict[str, Drain] = {}
        self.poppers = Poppers(self)  # which loop pops each inbox list (poppers.py)

    # -- receives (any loop) ----------------------------------------------------------------

    def take(self, channel: str) -> Popped | None:
        """An entry already popped for ``channel``, if any (the fast path of a receive)."""
        box = self.boxes.get(channel)
        if box is None or not box.buffer:
            return None
        with self.lock:
            return self._take(box)

    def take_or_wait(self, channel: str, key: str, loop: Loop) -> Popped | Waiter:
        """An entry for ``channel``, else a waiter registered in ``loop`` for the next one."""
        with self.lock:
            box = self.boxes.get(channel)
            if box is None:
                box = self.boxes[channel] = OwnBox(channel, key)
            payload = self._take(box) if box.buffer else None
            if payload is not None:
                return payload
            waiter: Waiter = loop.create_future()
            box.waiters.append(waiter)
            counts = self.waiting.setdefault(key, {})
            counts[loop] = counts.get(loop, 0) + 1
            return waiter

    def cancelled(self, channel: str, key: str, waiter: Waiter, loop: Loop) -> None:
        """The receive waiting on ``waiter`` for ``channel`` was cancelled: an entry already
        handed to it goes first in line again; held ones go to the next waiting receive."""
        with self.lock:
            box = self._box(channel, key)  # (pruned meanwhile if it held nothing)
            if waiter.done() and not waiter.cancelled():
                payload = waiter.result()
                if payload is not None:
                    expires = int((time.time() + self._expiry) * 1000)
                    box.buffer.appendleft((payload, expires))
            elif waiter in box.waiters:
                box.waiters.remove(waiter)
                self._unwait(box.key, waiter)
            self._kick(box, loop)

    def _take(self, box: OwnBox) -> Popped | None:
        buffer = box.buffer
        now = time.time() * 1000
        while buffer:
            payload, expires_at = buffer.popleft()
            if expires_at > now:
                return payload.copy() if type(payload) is dict else payload  # see _shared()
            self._on_expired(1)
        return None

    def _unwait(self, key: str, waiter: Waiter) -> None:
        counts = self.waiting.get(key)
        loop = waiter.get_loop()
        if counts and loop in counts:  # else its loop left (:meth:`leave`)
            counts[loop] -= 1
            if not counts[loop]:
                del counts[loop]

    def _kick(self, box: OwnBox, loop: Loop) -> None:
        """Held entries to the receives waiting: ``loop``'s get theirs now, other loops' are
        woken to take one each (in their loop, under the lock)."""
        held = len(box.buffer)
        waiters = box.waiters
        while held and waiters:
            waiter = waiters.popleft()
            self._unwait(box.key, waiter)
            if waiter.done():
                continue
            if waiter.get_loop() is loop:
                payload = self._take(box)
                if payload is None:  # all expired
                    waiters.appendleft(waiter)
                    counts = self.waiting[box.key]
                    counts[loop] = counts.get(loop, 0) + 1
                    return
                waiter.set_result(payload)
                held = len(box.buffer)
            elif wake(waiter, loop):
                held -= 1

    # -- popped entries (the popping loop) -------------------------------------------------

    def deliver(self, key: str, entries: list[bytes], loop: Loop) -> list[bytes]:
        """Hand ``entries`` popped from inbox ``key`` to the receives waiting on their channels
        (or to its drain), else keep them for the next receive; expired ones are dropped and
        counted. Returns the entries this layer did not write (malformed)."""
        now = time.time() * 1000
        routing = key[self._key_prefix :]
        malformed: list[bytes] = []
        with self.lock:
            drain = self.drains.get(key)
            if drain is not None:  # taken whole by its caller (Receiver.drain)
                expired = drain.add(entries, now, loop, malformed)
            else:
                expired = self._to_boxes(key, routing, entries, now, loop, malformed)
        if expired:
            self._on_expired(expired)
        return malformed

    def _to_boxes(
        self, key: str, routing: str, entries: list[bytes], now: float, loop: Loop, bad: list[bytes]
    ) -> int:
        expired = 0
        boxes_of: dict[bytes, list[OwnBox]] = {}  # a group's entries repeat one local part
        touched: dict[str, OwnBox] = {}
        for entry in entries:
            try:
                expires_at, local, payload = split_entry(entry)
                if expires_at <= now:
                    expired += 1
                    continue
                boxes = boxes_of.get(local)
                if boxes is None:
                    boxes = boxes_of[local] = [
                        self._box(routing + n, key) for n in local.decode().split(",")
                    ]
            except ValueError:
                bad.append(entry)
                continue
            shared = self._shared(payload) if len(boxes) > 1 else payload
            for box in boxes:
                waiters = box.waiters
                if waiters and not box.buffer and waiters[0].get_loop() is loop:
                    # The fast path: to a receive of this loop, first in line.
                    waiter = waiters.popleft()
                    self._unwait(key, waiter)
                    if not waiter.done():
                        waiter.set_result(shared.copy() if type(shared) is dict else shared)
                        continue
                box.buffer.append((shared, expires_at))
                if waiters:
                    touched[box.channel] = box
        for box in touched.values():  # other loops' receives: woken to take theirs
            self._kick(box, loop)
        return expired

    def _box(self, channel: str, key: str) -> OwnBox:
        box = self.boxes.get(channel)
        if box is None:
            box = self.boxes[channel] = OwnBox(channel, key)
        return box

    def _shared(self, payload: bytes) -> Popped:
        """A fan-out entry's payload for all its local members: decoded once when a shallow
        copy of the message is a whole one (every value immutable; each receive gets its own
        copy, see :meth:`_take`), else the bytes, decoded by each receive."""
        try:
            message = self._open(payload)
        except Exception:  # undecryptable or malformed: each receive raises, naming its channel
            return payload
        return message if whole_when_shallow(message) else payload

    # -- drains ---------------------------------------------------------------------------------

    def drained(
        self, key: str, loop: Loop
    ) -> list[tuple[int, bytes, bytes]] | asyncio.Future[None]:
        """Take every entry held for the drain of ``key``, else a waiter for the next ones."""
        with self.lock:
            drain = self.drains.get(key)
            if drain is None:
                drain = self.drains[key] = Drain(loop)
            drain.owner = loop
            if drain.entries:
                entries, drain.entries = drain.entries, []
                return entries
            drain.waiter = loop.create_future()
            return drain.waiter

    def drain_done(self, key: str, waiter: asyncio.Future[None]) -> None:
        with self.lock:
            drain = self.drains.get(key)
            if drain is not None and drain.waiter is waiter:
                drain.waiter = None

    # -- the end of a loop, flush, prune ----------------------------------------------------

    def fail(self, loop: Loop, why: str) -> None:
        """``loop`` is closing: its receives (and drain) still waiting end with
        ``ShardUnavailable(why)``; other loops' go on."""
        error = ShardUnavailable(why)
        with self.lock:
            for box in self.boxes.values():
                mine = [w for w in box.waiters if w.get_loop() is loop]
                for waiter in mine:
                    box.waiters.remove(waiter)
                    self._unwait(box.key, waiter)
                    if not waiter.done():
                        waiter.set_exception(error)
            for drain in self.drains.values():
                drained = drain.waiter
                if drained is not None and drained.get_loop() is loop and not drained.done():
                    drained.set_exception(error)

    def give_back(self, loop: Loop) -> list[tuple[str, list[bytes]]]:
        """What is held, as list entries to push back to the front of their lists
        (``close()``), when no other loop of the process receives here: ``loop`` pops those
        lists until it leaves (``Poppers.leave``), so none pops them before they are back.
        While other loops receive, it all stays here, where their receives (and this
        process's next ones) find it first, in order: only this layer can receive on these
        channels, and a pushed-back entry another loop is about to take would only make it pop
        again (and a loop that pops only what its receive needs would pop and push back the
        same head forever)."""
        out = []
        with self.lock:
            if self.poppers.others_live(loop):
                return []
            held = {box.key for box in self.boxes.values() if box.buffer}
            for key in held | {key for key, drain in self.drains.items() if drain.entries}:
                self.poppers.of[key] = loop
                entries = [e for b in self.boxes.values() if b.key == key for e in self._entries(b)]
                drain = self.drains.get(key)
                if drain is not None:
                    entries += [
                        make_entry(at, payload, local) for at, local, payload in drain.entries
                    ]
                    drain.entries = []
                out.append((key, entries))
        return out

    def _entries(self, box: OwnBox) -> list[bytes]:
        """Empty ``box`` into list entries, with its channel's local part."""
        local = box.channel.partition("!")[2].encode()
        seal = self._seal
        entries = [
            make_entry(expires, payload if isinstance(payload, bytes) else seal(payload), local)
            for payload, expires in box.buffer
        ]
        box.buffer.clear()
        return entries

    def clear(self) -> None:
        """Forget entries popped but not yet received (``flush()``)."""
        with self.lock:
            for box in self.boxes.values():
                box.buffer.clear()
            for drain in self.drains.values():
                drain.entries.clear()

    def prune(self) -> set[str]:
        """Drop expired entries held for channels nobody is receiving on, mailboxes left
        empty, drains and loops that are gone; return the list keys still in use."""
        now = time.time() * 1000
        with self.lock:
            for box in list(self.boxes.values()):
                if not box.waiters:
                    kept = deque(item for item in box.buffer if item[1] > now)
                    if len(kept) < len(box.buffer):
                        self._on_expired(len(box.buffer) - len(kept))
                        box.buffer = kept
                if not box.waiters and not box.buffer:
                    del self.boxes[box.channel]
            for key, drain in list(self.drains.items()):
                if drain.owner.is_closed() and not drain.entries:
                    del self.drains[key]
            self.waiting = {
                key: {lp: n for lp, n in counts.items() if not lp.is_closed()}
                for key, counts in self.waiting.items()
                if any(not lp.is_closed() for lp in counts)
            }
            self.poppers.prune()
            return {box.key for box in self.boxes.values()} | set(self.waiting) | set(self.drains)

    def queued(self) -> int:
        with self.lock:
            held = sum(len(drain.entries) for drain in self.drains.values())
            return held + sum(len(box.buffer) for box in self.boxes.values())

    def buffered_keys(self) -> set[str]:
        with self.lock:
            held = {key for key, drain in self.drains.items() if drain.entries}
            return held | {box.key for box in self.boxes.values() if box.buffer}
