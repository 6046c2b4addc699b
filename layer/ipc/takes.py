"""Taking messages off channel queues: pops, runs taken ahead, and expiry.

The receive side of :mod:`layer.ipc.queues` (which holds the layout's description). A pop of a
one-slot message, the hot path, is inline here; a run of one-extent messages of one order at
the head of a queue (a batch taken ahead, an expired run) goes back onto its order's cache as
one chain, in one journal step (``unlink_run``); a larger message is freed extent by extent.
"""

from __future__ import annotations

import mmap
import struct

from layer.base import Counters
from layer.ipc.blocks import cache_of
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
    U32,
    Geometry,
)
from layer.ipc.table import Key, Table

_SLOT_HEAD = struct.Struct("<IId")  # an extent's next, then MSG: payload length, expires
_QUEUE_WORDS = struct.Struct("<III")  # a channel entry's head, tail, count
# Module names, not imported ones: CPython 3.11 calls a method of an imported name through
# a bound method made per call (no LOAD_METHOD), measurably slower on these hot paths.
_CACHE_WORDS, _QUEUED_ACTIVE = CACHE_WORDS, QUEUED_ACTIVE
_u32_pack = U32.pack_into


class Takes:
    """Pops of payloads; called with the lock held."""

    def __init__(
        self, mm: mmap.mmap, geometry: Geometry, counters: Counters, table: Table, extents: Extents
    ) -> None:
        self.mm = mm
        self.counters = counters  # the owning layer's: expired messages are counted there
        self.mutable = geometry.entries + E_WORDS  # entry 0's kind-specific words
        self.slots = geometry.slots
        self.slot_size = geometry.slot_size
        self.extents = extents
        self.one_slot = extents.one_slot
        self.table = table

    def take(self, j: Journal, key: Key, now: float) -> bytes | None:
        """Pop the oldest unexpired payload, dropping (and counting) expired ones before it."""
        idx = self.table.channel_index(*key)
        if idx == NIL:
            return None
        taken = self._take_at(j, self.mutable + idx * ENTRY_SIZE, now)
        return None if taken is None else taken[0]

    def take_run(self, j: Journal, key: Key, now: float, most: int) -> list[tuple[bytes, float]]:
        """Pop up to ``most`` unexpired payloads with their expiry, oldest first (a receive
        taking ahead: one critical section for all), committing the journal after each step."""
        taken: list[tuple[bytes, float]] = []
        idx = self.table.channel_index(*key)
        if idx == NIL:
            return taken
        off = self.mutable + idx * ENTRY_SIZE
        while len(taken) < most:
            batch: list[tuple[bytes, float]] = []
            if not self.unlink_run(off, j, now, most - len(taken), batch):
                # the head is expired or spans extents (or the channel is empty)
                got = self._take_at(j, off, now)
                if got is None:
                    break
                batch = [got]
            j.commit()
            taken += batch
        return taken

    def unlink_run(
        self, off: int, j: Journal, now: float, most: int, taken: list[tuple[bytes, float]] | None
    ) -> int:
        """Unlink up to ``most`` one-extent messages of one order from the head of the channel
        at ``off``, in one mutation, and return how many: unexpired ones, their payloads and
        expiry appended to ``taken``, or (``taken`` None) expired ones, counted. Their blocks
        already chain in queue order, so the run goes onto its order's cache whole, and the
        journal saves only what a single pop saves (the entry, the G block, the last block's
        link) and the cache's words."""
        mm = self.mm
        five = ENTRY_WORDS.unpack_from(mm, off)
        head, tail, count, wait_head, wait_tail = five
        if not count:
            return 0
        slots, size, one_slot = self.slots, self.slot_size, self.one_slot
        single, expired = self.extents.single, taken is None
        at = last = k = 0
        nxt = head
        order = -2
        for _ in range(min(most, count)):
            at = slots + nxt * size
            link, length, expires = _SLOT_HEAD.unpack_from(mm, at)
            if (expires <= now) != expired:
                break
            this = 0 if length <= one_slot else single(length)
            if this != order and (order != -2 or this < 0):
                break
            order = this
            if taken is not None:
                taken.append((mm[at + 16 : at + 16 + length], expires))
            last, nxt, k = at, link, k + 1
        if not k:
            return 0
        g5 = PUSH_POP_WORDS.unpack_from(mm, G_OFF)
        j.queue_op(off, five, g5, last, nxt)
        cache = cache_of(order)
        if order:
            j.save(cache, 8)
        free, nfree = _CACHE_WORDS.unpack_from(mm, cache)
        _u32_pack(mm, last, free)  # the run's bytes stay intact until its blocks are reused
        _CACHE_WORDS.pack_into(mm, cache, head, nfree + k)
        queued, channels = _QUEUED_ACTIVE.unpack_from(mm, QUEUED)
        if k == count:
            channels -= wait_head == NIL  # the channel goes idle
            ENTRY_WORDS.pack_into(mm, off, NIL, NIL, 0, wait_head, wait_tail)
        else:
            _QUEUE_WORDS.pack_into(mm, off, nxt, tail, count - k)
        _QUEUED_ACTIVE.pack_into(mm, QUEUED, queued - k, channels)
        if expired:
            self.counters.expired += k
        return k

    def _take_at(self, j: Journal, off: int, now: float) -> tuple[bytes, float] | None:
        """Pop the oldest unexpired payload and its expiry of the channel at ``off``."""
        mm = self.mm
        five = ENTRY_WORDS.unpack_from(mm, off)
        head, tail, count, wait_head, _ = five
        if not count:
            return None
        at = self.slots + head * self.slot_size
        nxt, length, expires = _SLOT_HEAD.unpack_from(mm, at)
        if length > self.one_slot or expires <= now:
            return self._take_slow(j, off, now)
        # The hot path: an unexpired one-slot message.
        g5 = PUSH_POP_WORDS.unpack_from(mm, G_OFF)
        j.queue_op(off, five, g5, at, nxt)
        free, nfree, bump, queued, channels = g5
        _u32_pack(mm, at, free)  # the payload's bytes stay intact until the slot is reused
        if count == 1:
            channels -= wait_head == NIL  # the channel goes idle
            PUSH_POP_WORDS.pack_into(mm, G_OFF, head, nfree + 1, bump, queued - 1, channels)
            _QUEUE_WORDS.pack_into(mm, off, NIL, NIL, 0)
        else:
            PUSH_POP_WORDS.pack_into(mm, G_OFF, head, nfree + 1, bump, queued - 1, channels)
            _QUEUE_WORDS.pack_into(mm, off, nxt, tail, count - 1)
        return mm[at + 16 : at + 16 + length], expires

    def _take_slow(self, j: Journal, off: int, now: float) -> tuple[bytes, float] | None:
        """``_take_at`` when the head is expired or larger than one slot."""
        self.drop_expired(j, off, now)
        taken: list[tuple[bytes, float]] = []
        if self.unlink_run(off, j, now, 1, taken):
            return taken[0]
        five = ENTRY_WORDS.unpack_from(self.mm, off)
        if not five[2]:
            return None
        length, expires = MSG.unpack_from(self.mm, self.slots + five[0] * self.slot_size + 4)
        payload = self.extents.read(five[0], length)
        self._unqueue(j, off, length, five)
        return payload, expires

    def active(self, key: Key) -> bool:
        """Whether the channel has messages or waiters (counted in ``channels``)."""
        idx = self.table.channel_index(*key)
        if idx == NIL:
            return False
        _, _, count, wait_head, _ = ENTRY_WORDS.unpack_from(
            self.mm, self.mutable + idx * ENTRY_SIZE
        )
        return bool(count) or wait_head != NIL

    def drop_expired(self, j: Journal, off: int, now: float) -> None:
        """Drop (and count) the expired messages at the head of the channel at ``off``, however
        many, committing after each journal step: a run of one-extent messages of one order
        (``unlink_run``), or one larger message. The caller must be at a consistent point: the
        commits keep what it did before.

        Dropping them one record each in one step overflowed the journal after a few dozen (a
        channel that had waited a minute for a busy worker failed every receive)."""
        mm = self.mm
        while True:
            if not self.unlink_run(off, j, now, 1 << 30, None):
                five = ENTRY_WORDS.unpack_from(mm, off)
                if not five[2]:
                    return
                length, expires = MSG.unpack_from(mm, self.slots + five[0] * self.slot_size + 4)
                if expires > now:
                    return
                self._unqueue(j, off, length, five)  # an expired multi-extent message
                self.counters.expired += 1
            j.commit()

    def _unqueue(
        self, j: Journal, off: int, length: int, five: tuple[int, int, int, int, int]
    ) -> None:
        """Unlink the head message of the channel at ``off`` (whose words are ``five``) and
        free its extents."""
        mm = self.mm
        head, tail, count, wait_head, wait_tail = five
        j.save(off, 20)
        j.save(QUEUED, 8)
        nxt = self.extents.release_message(j, head, length)
        queued, channels = _QUEUED_ACTIVE.unpack_from(mm, QUEUED)
        idle = count == 1 and wait_head == NIL
        _QUEUED_ACTIVE.pack_into(mm, QUEUED, queued - 1, channels - idle)
        if count == 1:
            ENTRY_WORDS.pack_into(mm, off, NIL, NIL, 0, wait_head, wait_tail)
        else:
            ENTRY_WORDS.pack_into(mm, off, nxt, tail, count - 1, wait_head, wait_tail)
