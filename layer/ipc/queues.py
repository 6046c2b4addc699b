"""Channel queues over the arena: pushes here, pops and expiry in :mod:`layer.ipc.takes`.

A channel entry holds ``head, tail, count, wait_head, wait_tail``. A message is a chain of
extents (:mod:`layer.ipc.extents`) holding ``MSG`` (length, expiry) then the payload; the queue
links messages through the ``next`` word of each message's last extent, so pushing and popping
touch O(1) words whatever the depth. Messages up to ``extents.SMALL`` take one extent of their
size class; they are the hot paths here: a push takes a block off its order's cache, a pop puts
it back, and a run of them (a batch of sends, a batch taken ahead, an expired run) moves between
the queue and the cache as one chain, in one journal step.
"""

from __future__ import annotations

import mmap
import time
from collections.abc import Callable, Iterable
from functools import partial

from layer.base import Counters
from layer.exceptions import ChannelFull
from layer.ipc.blocks import NoRoom, cache_of
from layer.ipc.extents import Extents
from layer.ipc.journal import Journal
from layer.ipc.layout import (
    CACHE_WORDS,
    E_WORDS,
    ENTRY_SIZE,
    ENTRY_WORDS,
    G_OFF,
    MSG,
    NIL,
    PUSH_POP_WORDS,
    QUEUED,
    QUEUED_ACTIVE,
    SCRATCH,
    U32,
    Geometry,
)
from layer.ipc.table import Key, Table
from layer.ipc.takes import Takes
from layer.ipc.waitlists import WaitLists

NO_LIMIT = 1 << 62  # the capacity of a push that must not be refused for its channel's length
# Module names, not imported ones: CPython 3.11 calls a method of an imported name through
# a bound method made per call (no LOAD_METHOD), measurably slower on these hot paths.
_CACHE_WORDS, _QUEUED_ACTIVE = CACHE_WORDS, QUEUED_ACTIVE
_u32_pack = U32.pack_into
_u32_unpack = U32.unpack_from


class Queues:
    """Pushes of payloads; called with the lock held."""

    def __init__(
        self,
        mm: mmap.mmap,
        geometry: Geometry,
        counters: Counters,
        table: Table,
        extents: Extents,
        waits: WaitLists,
        takes: Takes,
    ) -> None:
        self.mm = mm
        self.counters = counters  # the owning layer's: drops are counted there
        self.entries = geometry.entries
        self.slots = geometry.slots
        self.slot_size = geometry.slot_size
        self.extents = extents
        self.blocks = extents.blocks
        self.one_slot = extents.one_slot
        self.table = table
        self.waits = waits
        self.takes = takes

    def push(
        self, j: Journal, key: Key, payload: bytes, expires: float, capacity: int
    ) -> tuple[int, int]:
        """Append ``payload``; return the waker index to post (or NIL) and the channel's new
        length. Raises ChannelFull (its channel at capacity, or the segment full)."""
        while True:
            try:
                return self._push(j, key, payload, expires, capacity)
            except NoRoom:
                j.rollback()  # only this push: it committed what came before
                if not self.blocks.drain(j):  # merge cached blocks, then try again
                    raise self._full(len(payload)) from None

    def _push(
        self, j: Journal, key: Key, payload: bytes, expires: float, capacity: int
    ) -> tuple[int, int]:
        name, h = key
        mm = self.mm
        length = len(payload)
        order = 0 if length <= self.one_slot else self.extents.single(length)
        cache = cache_of(order)
        if order < 0 or not _CACHE_WORDS.unpack_from(mm, cache)[1]:
            j.commit()  # keep what came before: a full segment rolls back this push only
            if order >= 0:
                self._refill(j, order, 1)
        idx = self.table.channel_entry(j, name, h)
        off = self.entries + idx * ENTRY_SIZE + E_WORDS
        five = ENTRY_WORDS.unpack_from(mm, off)
        head, tail, count, wait_head, wait_tail = five
        if count >= capacity:
            self.takes.drop_expired(j, off, time.monotonic())
            five = ENTRY_WORDS.unpack_from(mm, off)
            head, tail, count, wait_head, wait_tail = five
            if count >= capacity:
                j.commit()  # nothing of the push was written; keep what came before
                raise ChannelFull(_at_capacity(name.decode(), capacity))
        g5 = PUSH_POP_WORDS.unpack_from(mm, G_OFF)
        free, nfree, bump, queued, channels = g5
        slots, size = self.slots, self.slot_size
        link = slots + tail * size if count else SCRATCH
        j.queue_op(off, five, g5, link, _u32_unpack(mm, link)[0])  # before anything changes
        channels += not count and wait_head == NIL
        if order == 0 and nfree:  # one slot from the slot cache: the hot path
            first = last = free
            at = slots + free * size
            MSG.pack_into(mm, at + 4, length, expires)
            mm[at + 16 : at + 16 + length] = payload
            PUSH_POP_WORDS.pack_into(
                mm, G_OFF, _u32_unpack(mm, at)[0], nfree - 1, bump, queued + 1, channels
            )
        elif order > 0 and (cached := _CACHE_WORDS.unpack_from(mm, cache))[1]:  # one extent, cached
            j.save(cache, 8)
            first = last = cached[0]
            at = slots + first * size
            MSG.pack_into(mm, at + 4, length, expires)
            mm[at + 16 : at + 16 + length] = payload
            _CACHE_WORDS.pack_into(mm, cache, _u32_unpack(mm, at)[0], cached[1] - 1)
            _QUEUED_ACTIVE.pack_into(mm, QUEUED, queued + 1, channels)
        else:
            first, last = self.extents.write(j, payload, expires)
            _QUEUED_ACTIVE.pack_into(mm, QUEUED, queued + 1, channels)
        if count:
            _u32_pack(mm, link, first)
        else:
            head = first
        if (
            wait_head != NIL
            and (fired := self.waits.fire_head(j, wait_head, wait_tail)) is not None
        ):
            waker, wait_head, wait_tail = fired  # the entry's journal record covers these too
            ENTRY_WORDS.pack_into(mm, off, head, last, count + 1, wait_head, wait_tail)
            return waker, count + 1
        ENTRY_WORDS.pack_into(mm, off, head, last, count + 1, wait_head, wait_tail)
        return (NIL if wait_head == NIL else self.waits.fire(j, idx)), count + 1

    def push_run(
        self, j: Journal, key: Key, payloads: list[bytes], expires: float, wake: list[int]
    ) -> int:
        """Append ``payloads`` in order without a capacity check (their sender admitted them
        against credit); fire one waiter per payload while any wait, adding their wakers to
        ``wake``; return the channel's new length.

        When every payload takes one extent of one order and that order's cache holds enough
        (it is refilled first if not), the run is one mutation: one journal record, the blocks
        taken as one chain (a cache's blocks are linked in order already), one entry update.
        Otherwise each payload is pushed and committed on its own; one that finds the segment
        full is dropped and counted (``dropped_full``), as its sender has already returned.
        """
        name, h = key
        mm = self.mm
        m = len(payloads)
        longest = max(map(len, payloads))
        order = 0 if longest <= self.one_slot else self.extents.single(longest)
        if order > 0 and self.extents.single(min(map(len, payloads))) != order:
            order = -1
        cache = cache_of(order)
        if order >= 0 and (have := _CACHE_WORDS.unpack_from(mm, cache)[1]) < m:
            self._refill(j, order, m - have)
        idx = self.table.channel_entry(j, name, h)
        off = self.entries + idx * ENTRY_SIZE + E_WORDS
        five = ENTRY_WORDS.unpack_from(mm, off)
        head, tail, count, wait_head, wait_tail = five
        if order < 0 or _CACHE_WORDS.unpack_from(mm, cache)[1] < m:
            j.commit()
            pushes = (partial(self._push_unlimited, j, key, p, expires) for p in payloads)
            self._one_by_one(j, pushes, wake)
            return int(ENTRY_WORDS.unpack_from(mm, off)[2])
        g5 = PUSH_POP_WORDS.unpack_from(mm, G_OFF)
        slots, size = self.slots, self.slot_size
        link = slots + tail * size if count else SCRATCH
        j.queue_op(off, five, g5, link, _u32_unpack(mm, link)[0])  # before anything changes
        if order:
            j.save(cache, 8)
        free, nfree = _CACHE_WORDS.unpack_from(mm, cache)
        pack = MSG.pack_into
        first = last = cur = free
        for payload in payloads:
            at = slots + cur * size
            pack(mm, at + 4, len(payload), expires)
            mm[at + 16 : at + 16 + len(payload)] = payload
            last, cur = cur, _u32_unpack(mm, at)[0]
        _CACHE_WORDS.pack_into(mm, cache, cur, nfree - m)
        queued, channels = _QUEUED_ACTIVE.unpack_from(mm, QUEUED)
        _QUEUED_ACTIVE.pack_into(
            mm, QUEUED, queued + m, channels + (not count and wait_head == NIL)
        )
        if count:
            _u32_pack(mm, link, first)
        else:
            head = first
        ENTRY_WORDS.pack_into(mm, off, head, last, count + m, wait_head, wait_tail)
        for _ in range(m):  # each fire is a journal step of its own (it commits first)
            if wait_head == NIL or (waker := self.waits.fire(j, idx)) == NIL:
                break
            wake.append(waker)
            wait_head = ENTRY_WORDS.unpack_from(mm, off)[3]
        return int(count + m)

    def free_slots(self) -> int:
        """Slots not holding a message (caches, buddy lists, never used)."""
        return self.blocks.free_slots()

    def slots_for(self, length: int) -> int:
        """How many slots a ``length``-byte payload takes."""
        return 1 if length <= self.one_slot else self.extents.slots_for(length)

    def _refill(self, j: Journal, order: int, want: int) -> None:
        """Grow a short block cache by a block (a journal step of its own, after committing
        what came before); a full segment leaves it as it is."""
        j.commit()
        try:
            self.blocks.refill(j, order, want)
        except NoRoom:
            j.rollback()
        else:
            j.commit()

    def _full(self, length: int) -> ChannelFull:
        return ChannelFull(
            f"IPC segment is full: a {length}-byte message needs {self.slots_for(length)} slots "
            f"of {self.slot_size} bytes in {len(self.extents.plan(length))} contiguous "
            f"extent(s) and {self.free_slots()} slots are free; raise `size`"
        )

    def push_front(self, j: Journal, key: Key, payload: bytes, expires: float) -> int:
        """Put a payload a cancelled receive took back at the head (ignores capacity)."""
        name, h = key
        mm = self.mm
        idx = self.table.channel_entry(j, name, h)
        off = self.entries + idx * ENTRY_SIZE + E_WORDS
        five = ENTRY_WORDS.unpack_from(mm, off)
        head, tail, count, wait_head, wait_tail = five
        g5 = PUSH_POP_WORDS.unpack_from(mm, G_OFF)
        j.save(G_OFF, 20)
        try:
            first, last = self.extents.write(j, payload, expires)
        except NoRoom:
            raise self._full(len(payload)) from None
        link = self.slots + last * self.slot_size  # may still be a free-list link: journal it
        j.queue_op(off, five, g5, link, _u32_unpack(mm, link)[0])
        _u32_pack(mm, link, head)
        ENTRY_WORDS.pack_into(
            mm, off, first, tail if count else last, count + 1, wait_head, wait_tail
        )
        queued, channels = _QUEUED_ACTIVE.unpack_from(mm, QUEUED)
        _QUEUED_ACTIVE.pack_into(
            mm, QUEUED, queued + 1, channels + (not count and wait_head == NIL)
        )
        return NIL if wait_head == NIL else self.waits.fire(j, idx)

    def push_front_run(
        self, j: Journal, key: Key, items: list[tuple[bytes, float]], now: float, wake: list[int]
    ) -> None:
        """Put messages a process took ahead back at the head, in their order, committing per
        message; expired ones are dropped and counted, as are ones the segment has no room for
        (``dropped_full``). Wakers to post go to ``wake``."""
        live = [(payload, expires) for payload, expires in reversed(items) if expires > now]
        self.counters.expired += len(items) - len(live)
        pushes = (partial(self.push_front, j, key, p, expires) for p, expires in live)
        self._one_by_one(j, pushes, wake)

    def _push_unlimited(self, j: Journal, key: Key, payload: bytes, expires: float) -> int:
        return self.push(j, key, payload, expires, NO_LIMIT)[0]

    def _one_by_one(self, j: Journal, pushes: Iterable[Callable[[], int]], wake: list[int]) -> None:
        """Run each push as its own committed mutation; one that finds the segment full is
        rolled back, dropped and counted (``dropped_full``): its sender has already returned.
        Wakers to post go to ``wake``."""
        for push in pushes:
            try:
                waker = push()
            except ChannelFull:
                j.rollback()
                self.counters.dropped_full += 1
                continue
            j.commit()
            if waker != NIL:
                wake.append(waker)


def _at_capacity(name: str, capacity: int) -> str:
    if name.endswith("!"):  # an inbox (layer/ipc/inbox.py)
        return f"inbox {name!r} (its channels {name}*) is at its capacity of {capacity}"
    return f"channel {name!r} is at its capacity of {capacity}"
