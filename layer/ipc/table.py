"""Pools and the shared hash table: O(1) allocation and lookup inside the segment.

Entries (channels, groups, members) and waiter nodes come from fixed pools, each a free list
plus a bump pointer over never-used records, so a fresh segment needs no initialisation pass and
a flush is O(1) in the pools. Entries are found through a chained hash table keyed by
``(owner, name)`` with a CRC-32 of the name (Python's ``hash`` differs per process).
"""

from __future__ import annotations

import mmap
import zlib

from layer.exceptions import ChannelFull
from layer.flow import remember
from layer.ipc.journal import Journal, bump_generation
from layer.ipc.layout import (
    E_MUTABLE,
    E_NAME,
    E_NEXT,
    E_OWNER,
    ENTRY_BUMP,
    ENTRY_FREE,
    ENTRY_SIZE,
    FIVE,
    KEY,
    NIL,
    NODE_BUMP,
    NODE_FREE,
    NODE_SIZE,
    OWNER_CHANNEL,
    TABLE_GEN,
    U32,
    Geometry,
)

Key = tuple[bytes, int]  # a name's ASCII bytes and its CRC-32
_INDEX_CACHE = 8192

_u32_pack = U32.pack_into
_u32_unpack = U32.unpack_from


def make_key(name: str) -> Key:
    data = name.encode("ascii")
    return data, zlib.crc32(data)


def member_hash(channel_hash: int, group: int) -> int:
    """Hash of a membership: the channel's hash mixed with its group's entry index."""
    return (channel_hash + (group + 1) * 0x9E3779B1) & 0xFFFFFFFF


class Table:
    """The segment's pools and hash table; every mutating method takes the open journal."""

    def __init__(self, mm: mmap.mmap, geometry: Geometry) -> None:
        self.mm = mm
        self.geometry = geometry
        self.buckets = geometry.buckets
        self.mask = geometry.n_buckets - 1
        self.entries = geometry.entries
        self.mutable = geometry.entries + E_MUTABLE  # entry 0's five kind-specific words
        self.nodes = geometry.nodes
        self._index: dict[bytes, int] = {}  # channel name -> entry, valid for ``_index_gen``
        self._index_gen = -1

    # -- hash table -------------------------------------------------------------------------

    def find(self, owner: int, name: bytes, h: int) -> int:
        """Index of the entry ``(owner, name)``, or NIL."""
        mm = self.mm
        idx: int = _u32_unpack(mm, self.buckets + ((h & self.mask) << 2))[0]
        size = len(name)
        entries = self.entries
        while idx != NIL:
            off = entries + idx * ENTRY_SIZE
            nxt, eh, eo, nl = KEY.unpack_from(mm, off)
            if (
                eh == h
                and eo == owner
                and nl == size
                and mm[off + E_NAME : off + E_NAME + size] == name
            ):
                return idx
            idx = nxt
        return NIL

    def channel_index(self, name: bytes, h: int) -> int:
        """``find(OWNER_CHANNEL, name, h)`` through this process's cache of entry indexes.

        An entry never moves while it exists, and every delete (or rollback, or flush) bumps
        the table generation first, so a cached index is valid while the generation is unchanged.
        """
        gen = _u32_unpack(self.mm, TABLE_GEN)[0]
        cache = self._index
        if gen != self._index_gen:
            cache.clear()
            self._index_gen = gen
        idx = cache.get(name)
        if idx is None:
            idx = self.find(OWNER_CHANNEL, name, h)
            if idx != NIL:
                remember(cache, name, idx, _INDEX_CACHE)
        return idx

    def insert(self, j: Journal, owner: int, name: bytes, h: int, five: tuple[int, ...]) -> int:
        """Create entry ``(owner, name)`` with its five kind-specific words; ChannelFull if none."""
        mm = self.mm
        idx = self._alloc(j, ENTRY_FREE, ENTRY_BUMP, self.entries, ENTRY_SIZE, E_NEXT,
                          self.geometry.n_entries)  # fmt: skip
        if idx == NIL and self._reclaim(j):
            idx = self._alloc(j, ENTRY_FREE, ENTRY_BUMP, self.entries, ENTRY_SIZE, E_NEXT,
                              self.geometry.n_entries)  # fmt: skip
        if idx == NIL:
            raise ChannelFull(
                f"IPC segment has no free entries ({self.geometry.n_entries} channels, groups "
                "and memberships); raise `size` or drain channels"
            )
        off = self.entries + idx * ENTRY_SIZE
        bucket = self.buckets + ((h & self.mask) << 2)
        KEY.pack_into(mm, off, _u32_unpack(mm, bucket)[0], h, owner, len(name))
        FIVE.pack_into(mm, off + 16, *five)
        mm[off + E_NAME : off + E_NAME + len(name)] = name
        j.set_u32(bucket, idx)
        return idx

    def delete(self, j: Journal, idx: int) -> None:
        """Unlink entry ``idx`` from its hash chain and return it to the pool."""
        mm = self.mm
        bump_generation(mm)
        off = self.entries + idx * ENTRY_SIZE
        nxt, h, _, _ = KEY.unpack_from(mm, off)
        link = self.buckets + ((h & self.mask) << 2)
        cur = _u32_unpack(mm, link)[0]
        while cur != idx:
            link = self.entries + cur * ENTRY_SIZE + E_NEXT
            cur = _u32_unpack(mm, link)[0]
        j.set_u32(link, nxt)
        j.set_u32(off + E_OWNER, NIL)  # free: a reclaim scan must not take it for idle
        self._free(j, ENTRY_FREE, self.entries, ENTRY_SIZE, E_NEXT, idx)

    def _reclaim(self, j: Journal) -> int:
        """The pool ran dry: delete idle channel entries (no messages, no waiters).

        Emptied channels keep their entry (a queue that empties and refills, as most do, costs
        no delete and insert); this amortised sweep frees them only when space is needed.
        """
        mm = self.mm
        freed = 0
        j.commit()
        for idx in range(_u32_unpack(mm, ENTRY_BUMP)[0]):
            off = self.entries + idx * ENTRY_SIZE
            if _u32_unpack(mm, off + E_OWNER)[0] == OWNER_CHANNEL:
                _, _, count, wait_head, _ = FIVE.unpack_from(mm, off + E_MUTABLE)
                if not count and wait_head == NIL:
                    self.delete(j, idx)
                    j.commit()
                    freed += 1
        return freed

    # -- pools ------------------------------------------------------------------------------

    def alloc_node(self, j: Journal) -> int:
        idx = self._alloc(j, NODE_FREE, NODE_BUMP, self.nodes, NODE_SIZE, 4,
                          self.geometry.n_nodes)  # fmt: skip
        if idx == NIL:
            raise ChannelFull(
                f"IPC segment has no free waiter nodes ({self.geometry.n_nodes} waiting "
                "receivers); raise `size`"
            )
        return idx

    def free_node(self, j: Journal, idx: int) -> None:
        """Return a node; its entry word becomes NIL so a scan can tell free from used."""
        off = self.nodes + idx * NODE_SIZE
        j.set_u32(off + 8, NIL)
        self._free(j, NODE_FREE, self.nodes, NODE_SIZE, 4, idx)

    def _alloc(
        self, j: Journal, free: int, bump: int, base: int, stride: int, link: int, limit: int
    ) -> int:
        mm = self.mm
        j.save_g()
        idx: int = _u32_unpack(mm, free)[0]
        if idx != NIL:
            at = base + idx * stride + link
            j.save(at, 4)  # the record's link is overwritten by its new owner
            _u32_pack(mm, free, _u32_unpack(mm, at)[0])
            return idx
        idx = _u32_unpack(mm, bump)[0]
        if idx >= limit:
            return NIL
        _u32_pack(mm, bump, idx + 1)
        return idx

    def _free(self, j: Journal, free: int, base: int, stride: int, link: int, idx: int) -> None:
        mm = self.mm
        j.save_g()
        at = base + idx * stride + link
        j.set_u32(at, _u32_unpack(mm, free)[0])
        _u32_pack(mm, free, idx)

    def _count(self, at: int, delta: int) -> None:
        """Adjust a G-block count (the caller's mutation has saved the G block)."""
        _u32_pack(self.mm, at, _u32_unpack(self.mm, at)[0] + delta)
