"""The shared segment's layout: a header, then fixed tables, then the slot arena.

Everything is addressed by offsets into one ``mmap``; every struct uses little-endian standard
sizes with 4- or 8-byte fields, which CPython packs with one ``memcpy`` each, so a process killed
mid-write can tear a *record* but never a single word. Records that must change together are
protected by the undo journal (see :mod:`layer.ipc.journal`).

```
0      header: magic, version, geometry, journal state, G block (pool heads, counts)
256    B block: the buddy allocator's order bitmap, free slot count, list heads, block caches
512    undo journal (records of saved bytes)
16384  wakers: one record + wake ring per attached layer instance
...    buckets: u32 heads of the hash chains
...    entries: channels, groups and group members (keyed by owner + name)
...    nodes: waiter registrations (instance X waits on channel C), doubly linked per channel
...    tags: one byte per slot (``order + 1`` where a free buddy block starts)
...    slots: the arena, ``slot_size`` units; a message is a chain of extents (blocks of
       ``2**order`` contiguous slots, see :mod:`layer.ipc.extents`)
```
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

MAGIC = 0x31435049_5453494B  # b"KISTIPC1" little-endian
# 2: doorbell FIFOs replace the semaphores; 3: the table generation (cached indexes);
# 4: messages in extents from a buddy allocator (B block, tags), a 16 KiB header; 5: one
# inbox queue per routing name for process-specific channels (entries carry local parts)
VERSION = 5
NIL = 0xFFFFFFFF

# -- header ------------------------------------------------------------------------------------
HEADER_SIZE = 16384  # the journal's room: a message's extents are freed in one journal step
MAGIC_OFF = 0
# version, slot_size, n_slots, n_entries, n_buckets, n_nodes, n_wakers, max_order, then u64
# offsets
GEOMETRY = struct.Struct("<IIIIIIIIQQQQQQQ")
GEOMETRY_OFF = 8
JSTATE = struct.Struct("<II")  # bytes of undo records in use, flush-in-progress flag
JSTATE_OFF = 128
FLUSHING = 1
RECOVERIES = 136  # u32: how many times a lock holder repaired a dead holder's mutation
# u32, bumped before an entry is deleted, by a rollback and by a flush: a process may cache
# channel entry indexes while it is unchanged.
TABLE_GEN = 140
G_OFF = 192  # the G block: every global word a mutation may touch, journaled as one record
G_SIZE = 48
# A push or pop changes exactly the first five: slot free head, free count, bump, queued
# messages and active channels (with messages or waiters; idle entries are reclaimed lazily).
QUEUED, CHANNELS = G_OFF + 12, G_OFF + 16  # after the slot pool's head, count, bump
ENTRY_FREE, ENTRY_BUMP = G_OFF + 20, G_OFF + 24
NODE_FREE, NODE_BUMP = G_OFF + 28, G_OFF + 32
GROUPS, EPOCH = G_OFF + 36, G_OFF + 40
SCRATCH = G_OFF + 44  # a word nobody reads: the target of "no link changed" undo records
PUSH_POP_WORDS = struct.Struct("<IIIII")  # those five words
QUEUED_ACTIVE = struct.Struct("<II")  # at QUEUED: queued messages, active channels
CACHE_WORDS = struct.Struct("<II")  # a block cache's head and count (see blocks.cache_of)
# The B block: the buddy allocator's bitmap of non-empty orders, free slots on its lists, a
# list head per order, then a block cache (head, count) per order (MAX_ORDERS at most).
B_BITMAP, B_FREE, B_HEADS = 256, 260, 264
MAX_ORDERS = 16
B_CACHES = B_HEADS + 4 * MAX_ORDERS
B_SIZE = 8 + 12 * MAX_ORDERS
TOP_BLOCK = 1 << 20  # the largest extent's size in bytes, when the segment has room for 4
JOURNAL_OFF = 512
JOURNAL_END = HEADER_SIZE

# -- entries: channels, groups, members --------------------------------------------------------
ENTRY_SIZE = 160
E_NEXT, E_OWNER = 0, 8  # then hash at 4, name length at 12
# channel: head, tail, count, wait_head, wait_tail | group: first, last, members |
# member: prev, next, channel hash (prev/next link the group's member list)
E_WORDS, E_WORDS_SIZE = 16, 24  # the kind-specific words (the five of ENTRY_WORDS, padded)
M_NEXT, M_HASH = E_WORDS + 4, E_WORDS + 8  # a member's next and channel hash (prev: E_WORDS)
E_EXPIRES = 40  # f64, members only
E_NAME = 48
KEY = struct.Struct("<IIII")  # next, hash, owner, name length
ENTRY_WORDS = struct.Struct("<IIIII")  # the five kind-specific words at E_WORDS
OWNER_CHANNEL = 0xFFFFFFF0
OWNER_GROUP = 0xFFFFFFF1

# -- waiter nodes ------------------------------------------------------------------------------
NODE_SIZE = 16
NODE = struct.Struct("<IIIHH")  # prev, next, entry, waker, waker generation
FIRED = 0xFFFFFFFE  # a node's prev once a send has fired it (it is then in its waker's ring)

# -- wakers ------------------------------------------------------------------------------------
RING = 64
WAKER_SIZE = 64 + 4 * RING
WAKER = struct.Struct("<IIIIII")  # in use, generation, ring read, ring write, overflowed, spinning
W_STATE, W_READ, W_WRITE, W_OVERFLOW, W_SPINNING = 0, 8, 12, 16, 20  # generation at 4
W_RING = 64
MAX_WAKERS = 256

# -- slots -------------------------------------------------------------------------------------
# An extent is ``next`` (u32) + data; a message is the stream ``MSG`` + payload across a chain.
MSG = struct.Struct("<Id")  # payload length, expires (time.monotonic(), shared by the host)

U32 = struct.Struct("<I")
U64 = struct.Struct("<Q")
F64 = struct.Struct("<d")


@dataclass(frozen=True)
class Geometry:
    """Sizes and offsets of every region, derived from the segment size and slot size."""

    size: int
    slot_size: int
    n_slots: int
    n_entries: int
    n_buckets: int
    n_nodes: int
    n_wakers: int
    max_order: int  # the largest extent is ``slot_size << max_order`` bytes
    wakers: int
    buckets: int
    entries: int
    nodes: int
    tags: int
    slots: int

    @classmethod
    def plan(cls, size: int, slot_size: int) -> Geometry:
        """Lay out ``size`` bytes: about 5% for tables, the rest for message slots, a whole
        number of top-order blocks (1 MiB, or less when the segment holds fewer than 4)."""
        n_entries = max(1024, min(size // 4096, 1 << 20))
        n_buckets = 1 << (n_entries - 1).bit_length()
        n_nodes = n_entries
        wakers = HEADER_SIZE
        buckets = wakers + MAX_WAKERS * WAKER_SIZE
        entries = buckets + 4 * n_buckets
        nodes = entries + ENTRY_SIZE * n_entries
        tags = nodes + NODE_SIZE * n_nodes
        room = min((size - tags - 4096) // (slot_size + 1), NIL - 1)  # a tag byte per slot
        if room < 16:
            raise ValueError(f"size {size} is too small for the IPC tables; use at least 1MB")
        max_order = min((TOP_BLOCK // slot_size).bit_length() - 1, MAX_ORDERS - 1)
        while max_order and room >> max_order < 4:
            max_order -= 1
        n_slots = room >> max_order << max_order
        slots = _align(tags + n_slots, 4096)
        return cls(size, slot_size, n_slots, n_entries, n_buckets, n_nodes, MAX_WAKERS,
                   max_order, wakers, buckets, entries, nodes, tags, slots)  # fmt: skip

    def pack(self) -> tuple[int, ...]:
        return (VERSION, self.slot_size, self.n_slots, self.n_entries, self.n_buckets,
                self.n_nodes, self.n_wakers, self.max_order, self.size, self.wakers,
                self.buckets, self.entries, self.nodes, self.tags, self.slots)  # fmt: skip

    @classmethod
    def unpack(cls, values: tuple[int, ...]) -> Geometry:
        (_, slot_size, n_slots, n_entries, n_buckets, n_nodes, n_wakers, max_order,
         size, wakers, buckets, entries, nodes, tags, slots) = values  # fmt: skip
        return cls(size, slot_size, n_slots, n_entries, n_buckets, n_nodes, n_wakers,
                   max_order, wakers, buckets, entries, nodes, tags, slots)  # fmt: skip


def _align(value: int, to: int) -> int:
    return (value + to - 1) // to * to
