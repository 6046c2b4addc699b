"""Messages in the arena: each a chain of extents (blocks of contiguous slots, :mod:`blocks`).

A message used to be a chain of ``slot_size`` slots, each allocated, linked and copied on its
own: a 64 KiB message was 269 of them, ~270 µs of Python per message. Now it is one extent of
its size class (up to ``SMALL``) or at most a few extents, so writing or reading it is one
``memcpy`` per extent, and the per-message work is O(1) whatever its size. Each extent keeps
its first 4 bytes for a link: to the message's next extent, or from its last extent to the next
message in the queue. The first extent then holds ``MSG`` (length, expiry), the payload follows
across the extents in order.
"""

from __future__ import annotations

import mmap
from bisect import bisect_left
from functools import lru_cache

from layer.ipc.blocks import Blocks, NoRoom
from layer.ipc.journal import Journal
from layer.ipc.layout import JOURNAL_END, JOURNAL_OFF, MSG, U32, Geometry

__all__ = ["Extents", "NoRoom", "largest_payload", "plan", "step_bound"]

# Messages up to an extent of order SMALL (128 KiB with 256-byte slots) take one extent of
# their size class (up to half of it unused), so runs of them move as chains (see queues.py);
# larger ones at most EXTENTS extents below the top order (at most ~1/8 unused).
SMALL = 9
EXTENTS = 4
_u32_pack = U32.pack_into
_u32_unpack = U32.unpack_from


def step_bound(orders: tuple[int, ...], top: int) -> int:
    """The most journal bytes allocating or freeing a message of extents ``orders`` writes: per
    extent a cache or list take (up to 6 one-word records of 24 bytes) and a 5-record list
    update per order split or merged (docs/ipc.md, "Bounds")."""
    return sum(24 * (7 + 5 * (top - order)) for order in orders)


def largest_payload(slot_size: int, top: int) -> int:
    """The largest payload whose push or pop fits one journal step, with room to spare for the
    rest of the step (the entry, the counts, a waiter fired: under 400 bytes)."""
    room = JOURNAL_END - JOURNAL_OFF - 400 - step_bound((0,) * EXTENTS, top)
    return room // step_bound((top,), top) * ((slot_size << top) - 4)


@lru_cache(maxsize=4096)
def plan(total: int, slot_size: int, top: int) -> tuple[int, ...]:
    """The orders of the extents holding ``total`` bytes (``MSG`` + payload), largest first.

    Whole top-order blocks first, then up to ``EXTENTS`` smaller ones: the next one is the
    smallest order that holds the rest if that wastes at most an eighth of it, else the largest
    order the rest fills completely. Each extent keeps 4 bytes for its link.
    """
    data = [(slot_size << order) - 4 for order in range(top + 1)]
    if total <= data[min(SMALL, top)]:
        return (bisect_left(data, total),)
    orders: list[int] = []
    while total > data[top]:
        orders.append(top)
        total -= data[top]
    for _ in range(EXTENTS - 1):
        fits = bisect_left(data, total)
        if fits == 0 or data[fits] - total <= data[fits] >> 3:
            break
        orders.append(fits - 1)
        total -= data[fits - 1]
    orders.append(bisect_left(data, total))
    return tuple(orders)


class Extents:
    """Messages written into and read out of blocks (under the lock)."""

    def __init__(self, mm: mmap.mmap, geometry: Geometry) -> None:
        self.mm = mm
        self.blocks = Blocks(mm, geometry)
        self.base = geometry.slots
        self.slot_size = geometry.slot_size
        self.top = geometry.max_order
        self.data = [(self.slot_size << order) - 4 for order in range(self.top + 1)]
        self.small = self.data[min(SMALL, self.top)] - MSG.size  # the longest one-extent payload
        self.one_slot = self.data[0] - MSG.size  # the longest payload of one slot

    def plan(self, length: int) -> tuple[int, ...]:
        """The orders of the extents a ``length``-byte payload takes."""
        return plan(length + MSG.size, self.slot_size, self.top)

    def single(self, length: int) -> int:
        """The order of the one extent a ``length``-byte payload takes, or -1 if it takes
        several."""
        if length > self.small:
            return -1
        return bisect_left(self.data, length + MSG.size)

    def slots_for(self, length: int) -> int:
        if length <= self.small:  # the send path's common case, without plan()'s cache lookup
            return 1 << bisect_left(self.data, length + MSG.size)
        return sum(1 << order for order in self.plan(length))

    def write(self, j: Journal, payload: bytes, expires: float) -> tuple[int, int]:
        """Copy a message into fresh extents (unreachable until linked); return the first and
        last slot. Raises NoRoom (the caller rolls back)."""
        mm, base, size, data = self.mm, self.base, self.slot_size, self.data
        length = len(payload)
        view = memoryview(payload)
        orders = self.plan(length)
        first = prev = self.blocks.alloc(j, orders[0])
        at = base + first * size
        MSG.pack_into(mm, at + 4, length, expires)
        done = min(length, data[orders[0]] - MSG.size)
        mm[at + 16 : at + 16 + done] = view[:done]
        for order in orders[1:]:
            block = self.blocks.alloc(j, order)
            _u32_pack(mm, base + prev * size, block)  # journaled by alloc's save of ``prev``
            at = base + block * size + 4
            n = min(length - done, data[order])
            mm[at : at + n] = view[done : done + n]
            done += n
            prev = block
        return first, prev

    def read(self, first: int, length: int) -> bytes:
        """The payload of the message whose first slot is ``first``."""
        mm, base, size, data = self.mm, self.base, self.slot_size, self.data
        at = base + first * size
        if length + MSG.size <= data[0]:
            return mm[at + 16 : at + 16 + length]
        orders = self.plan(length)
        if len(orders) == 1:
            return mm[at + 16 : at + 16 + length]
        out = bytearray(length)
        with memoryview(mm) as view:
            done = data[orders[0]] - MSG.size
            out[:done] = view[at + 16 : at + 16 + done]
            cur = first
            for order in orders[1:]:
                cur = _u32_unpack(mm, base + cur * size)[0]
                at = base + cur * size + 4
                n = min(length - done, data[order])
                out[done : done + n] = view[at : at + n]
                done += n
        return out  # type: ignore[return-value]  # a bytearray: msgpack and mmap take it

    def release_message(self, j: Journal, first: int, length: int) -> int:
        """Free a message's extents; return the word its last extent linked to (the next
        message's first slot, when it was queued)."""
        mm, base, size = self.mm, self.base, self.slot_size
        cur = first
        for order in self.plan(length):
            nxt = _u32_unpack(mm, base + cur * size)[0]
            self.blocks.release(j, cur, order)
            cur = nxt
        return int(cur)
