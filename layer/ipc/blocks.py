"""Free space in the arena: blocks of ``2**order`` contiguous slots, from a buddy allocator
with a cache per order. Called with the segment lock held; every change journaled.

Free space is three structures:

- the **slot cache**, the singly linked list of free one-slot blocks at the head of the G block
  (``free``, ``nfree``). One-slot messages, the hot path, pop and push it in O(1) words, and
  runs of them (a batch taken ahead, an expired run) go back onto it as one chain;
- a **block cache** per larger order below the top (B block: head, count): a freed block of a
  size the workload uses is reused as it is, two journal records to take or give back one;
- the **buddy lists**, one doubly linked list per order in the B block, with a tag byte per slot
  (``order + 1`` at the first slot of a free block, else 0) so a freed block finds and merges
  with its free buddy in O(1) per order. They hold top-order blocks and what splits leave;
  never-used space is handed out whole top-order blocks at a time by the bump pointer, so
  creating and flushing a segment stays O(1) (plus clearing the tags).

Cached blocks are not merged, so a burst of messages of one size can hold space a message of
another needs: when no block of an order is free, up to ``DRAIN`` cached blocks are given back
to the buddy lists (merging), each as a journal step, and the allocation retried.

Every word a structure keeps inside a block (a free list's links, a message's link) is
journaled before it changes, so a rollback restores the free lists and the queues exactly.
"""

from __future__ import annotations

import mmap
import operator
import struct
from collections.abc import Callable

from layer.ipc.journal import Journal
from layer.ipc.layout import (
    B_BITMAP,
    B_CACHES,
    B_FREE,
    B_HEADS,
    B_SIZE,
    G_OFF,
    MAX_ORDERS,
    NIL,
    U32,
    Geometry,
)

REFILL = 5  # an empty cache is refilled with 2**REFILL blocks at once (or more)
DRAIN = 2048  # cached blocks given back to the buddy lists per failed allocation
_LINKS = struct.Struct("<II")  # a free block's next and prev; a cache's head and count
_COUNTS = struct.Struct("<" + "4xI" * MAX_ORDERS)  # every cache's count alone
_ORDERS = range(MAX_ORDERS)
_lshift = operator.lshift
_EMPTY_B = (  # no free block in any list or cache
    struct.pack("<II", 0, 0) + b"\xff" * 4 * MAX_ORDERS + struct.pack("<II", NIL, 0) * MAX_ORDERS
)
_u32_pack = U32.pack_into
_u32_unpack = U32.unpack_from


class NoRoom(Exception):
    """No free block of the order asked for (after the bump pointer); the step must be rolled
    back: blocks taken before the failure are journaled, not lost."""


def cache_of(order: int) -> int:
    """Where the cache of blocks of ``order`` keeps its head and count (the slot cache's are
    the G block's first words)."""
    return G_OFF if order <= 0 else B_CACHES + 8 * order


class Blocks:
    """The arena's free space (under the lock)."""

    def __init__(self, mm: mmap.mmap, geometry: Geometry) -> None:
        self.mm = mm
        self.base = geometry.slots
        self.slot_size = geometry.slot_size
        self.top = geometry.max_order
        self.n_slots = geometry.n_slots
        self.tags = geometry.tags

    def alloc(self, j: Journal, order: int) -> int:
        """A free block of ``order``: from its cache, a buddy list (split down) or the bump
        pointer. Its first 8 bytes are journaled: the caller may write there. Raises NoRoom."""
        mm, base, size = self.mm, self.base, self.slot_size
        cache = G_OFF if order == 0 else B_CACHES + 8 * order
        head, count = _LINKS.unpack_from(mm, cache)
        if count and order < self.top:
            at = base + head * size
            j.save(cache, 8)
            j.save(at, 8)
            _LINKS.pack_into(mm, cache, _u32_unpack(mm, at)[0] if count > 1 else NIL, count - 1)
            return int(head)
        above = _u32_unpack(mm, B_BITMAP)[0] >> order
        if above:
            have = order + (above & -above).bit_length() - 1
            block = _u32_unpack(mm, B_HEADS + 4 * have)[0]
            self._unlink(j, block, have)
        else:
            block = _u32_unpack(mm, G_OFF + 8)[0]
            if block >= self.n_slots:
                raise NoRoom
            j.set_u32(G_OFF + 8, block + (1 << self.top))
            have = self.top
        j.save(base + block * size, 8)
        while have > order:
            have -= 1
            self._push(j, block + (1 << have), have)
        return int(block)

    def release(self, j: Journal, block: int, order: int, cache: bool = True) -> None:
        """Free a block: onto its order's cache (below the top order, unless ``cache`` is
        false), else merged with its free buddies onto their buddy list."""
        mm = self.mm
        if cache and order < self.top:
            at = self.base + block * self.slot_size
            heads = G_OFF if order == 0 else B_CACHES + 8 * order
            head, count = _LINKS.unpack_from(mm, heads)
            j.save(heads, 8)
            j.set_u32(at, head)
            _LINKS.pack_into(mm, heads, block, count + 1)
            return
        tags = self.tags
        while order < self.top:
            buddy = block ^ (1 << order)
            if mm[tags + buddy] != order + 1:
                break
            self._unlink(j, buddy, order)
            block &= ~(1 << order)
            order += 1
        self._push(j, block, order)

    def refill(self, j: Journal, order: int, want: int) -> None:
        """Put at least ``want`` fresh blocks of ``order`` on its cache: one larger block (of
        ``2**REFILL`` of them or more) split and linked in order, so a run of one-extent
        messages takes them as one chain. Raises NoRoom. Only the large block's first 8 bytes
        held a free list's links (journaled by ``alloc``); the other words are free to write."""
        mm, base, size = self.mm, self.base, self.slot_size
        big = min(order + max(REFILL, (want - 1).bit_length()), self.top)
        block = self.alloc(j, big)
        n, step = 1 << (big - order), size << order
        cache = cache_of(order)
        head, count = _LINKS.unpack_from(mm, cache)
        at = base + block * size
        for nxt in range(block + (1 << order), block + (n << order), 1 << order):
            _u32_pack(mm, at, nxt)
            at += step
        _u32_pack(mm, at, head)  # the last block links to the rest of the cache
        j.save(cache, 8)
        _LINKS.pack_into(mm, cache, block, count + n)

    def drain(self, j: Journal, most: int = DRAIN) -> int:
        """Give up to ``most`` cached blocks back to the buddy lists (merging), smallest order
        first, committing each; return how many. The caller must be at a consistent point."""
        mm, base, size = self.mm, self.base, self.slot_size
        done = 0
        for order in range(self.top):
            cache = G_OFF if order == 0 else B_CACHES + 8 * order
            while done < most:
                head, count = _LINKS.unpack_from(mm, cache)
                if not count:
                    break
                j.save(cache, 8)
                nxt = _u32_unpack(mm, base + head * size)[0]
                _LINKS.pack_into(mm, cache, nxt if count > 1 else NIL, count - 1)
                self.release(j, head, order, cache=False)
                j.commit()
                done += 1
        return done

    def free_slots(self) -> int:
        """Slots in no message: the caches, the buddy lists and never used."""
        return self.space()[0]

    def space(self) -> tuple[int, list[int], int]:
        """The free slots, and the blocks an allocation is sure to find: each order's cached
        count (index 0 unused) and the top-order blocks never used yet (past the bump)."""
        mm = self.mm
        nfree, bump = _LINKS.unpack_from(mm, G_OFF + 4)
        counts = list(_COUNTS.unpack_from(mm, B_CACHES))
        cached = sum(map(_lshift, counts, _ORDERS))  # no generator: every direct send asks
        unused = self.n_slots - bump
        free = int(nfree + cached + _u32_unpack(mm, B_FREE)[0] + unused)
        return free, counts, unused >> self.top

    def reset(self) -> None:
        """Empty buddy lists, caches and tags (a flush; the G block's part is reset there)."""
        mm = self.mm
        mm[B_BITMAP : B_BITMAP + B_SIZE] = _EMPTY_B
        mm[self.tags : self.tags + self.n_slots] = bytes(self.n_slots)

    def _unlink(self, j: Journal, block: int, order: int) -> None:
        mm, base, size = self.mm, self.base, self.slot_size
        nxt, prev = _LINKS.unpack_from(mm, base + block * size)
        if prev == NIL:
            j.set_u32(B_HEADS + 4 * order, nxt)
            if nxt == NIL:
                j.set_u32(B_BITMAP, _u32_unpack(mm, B_BITMAP)[0] & ~(1 << order))
        else:
            j.set_u32(base + prev * size, nxt)
        if nxt != NIL:
            j.set_u32(base + nxt * size + 4, prev)
        j.save(self.tags + block, 1)
        mm[self.tags + block] = 0
        j.set_u32(B_FREE, _u32_unpack(mm, B_FREE)[0] - (1 << order))

    def _push(self, j: Journal, block: int, order: int) -> None:
        mm, base, size = self.mm, self.base, self.slot_size
        head = _u32_unpack(mm, B_HEADS + 4 * order)[0]
        at = base + block * size
        j.save(at, 8)
        _LINKS.pack_into(mm, at, head, NIL)
        if head == NIL:
            j.set_u32(B_BITMAP, _u32_unpack(mm, B_BITMAP)[0] | 1 << order)
        else:
            j.set_u32(base + head * size + 4, block)
        j.set_u32(B_HEADS + 4 * order, block)
        j.save(self.tags + block, 1)
        mm[self.tags + block] = order + 1
        j.set_u32(B_FREE, _u32_unpack(mm, B_FREE)[0] + (1 << order))


def check_lists(
    b: bytearray, g: Geometry, marks: bytearray, problem: Callable[[str], None]
) -> None:
    """The fsck of the buddy lists and block caches in a settled copy ``b`` of a segment
    (``layer.ipc.check``): each block on one list once, aligned, below the bump pointer, tagged
    on a buddy list (with its back link right) and untagged in a cache; the bitmap, the free
    count and the tags agree with the lists. Marks the blocks' slots ``1`` (free) in
    ``marks``, which must already show the slot cache."""
    bitmap, free = _LINKS.unpack_from(b, B_BITMAP)
    blocks = slots = 0
    for order in range(MAX_ORDERS):
        cur = _u32_unpack(b, B_HEADS + 4 * order)[0]
        if (cur != NIL) != bool(bitmap >> order & 1) or (cur != NIL and order > g.max_order):
            problem(f"the buddy list of order {order} and its bitmap bit disagree")
        prev, n, seen = NIL, 1 << order, 0
        while cur != NIL and order <= g.max_order:
            if cur % n or cur + n > len(marks) or any(marks[cur : cur + n]) or seen > g.n_slots:
                problem(f"the buddy list of order {order} reaches slot {cur}: misaligned, past "
                        "the bump pointer, in a cycle or holding slots in use")  # fmt: skip
                break
            marks[cur : cur + n] = b"\x01" * n
            if b[g.tags + cur] != order + 1:
                problem(f"free block {cur} of order {order} is tagged {b[g.tags + cur]}")
            nxt, back = _LINKS.unpack_from(b, g.slots + cur * g.slot_size)
            if back != prev:
                problem(f"free block {cur} of order {order} links back to {back}, not {prev}")
            blocks, slots, seen = blocks + 1, slots + n, seen + 1
            prev, cur = cur, nxt
    if free != slots:
        problem(f"the buddy free count is {free} but its lists hold {slots} slots")
    for order in range(1, MAX_ORDERS):
        cur, count = _LINKS.unpack_from(b, B_CACHES + 8 * order)
        if count and order >= g.max_order:
            problem(f"the block cache of order {order} holds {count}, above the top order")
            continue
        n = 1 << order
        for _ in range(count):
            if cur % n or cur + n > len(marks) or any(marks[cur : cur + n]) or b[g.tags + cur]:
                problem(f"the block cache of order {order} reaches slot {cur}: misaligned, past "
                        "the bump pointer, tagged, in a cycle or holding slots in use")  # fmt: skip
                break
            marks[cur : cur + n] = b"\x01" * n
            cur = _u32_unpack(b, g.slots + cur * g.slot_size)[0]
    if (tagged := g.n_slots - b.count(0, g.tags, g.tags + g.n_slots)) != blocks:
        problem(f"{tagged} slots carry a free-block tag but the buddy lists hold {blocks} blocks")
