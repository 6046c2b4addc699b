"""The segment's record pools: channel/group/member entries and waiter nodes.

Each pool is a free list plus a bump pointer over never-used records (heads in the G block),
so a fresh segment needs no initialisation pass and a flush is O(1) in the pools.
"""

from __future__ import annotations

import mmap

from layer.exceptions import ChannelFull
from layer.ipc.journal import Journal
from layer.ipc.layout import (
    E_NEXT,
    ENTRY_BUMP,
    ENTRY_FREE,
    ENTRY_SIZE,
    NIL,
    NODE_BUMP,
    NODE_FREE,
    NODE_SIZE,
    U32,
    Geometry,
)

_NODE_LINK = 4  # a free node's next (its ``next`` word)
_NODE_ENTRY = 8  # a node's channel entry: NIL while the node is free
_u32_pack = U32.pack_into
_u32_unpack = U32.unpack_from


class Pools:
    """Allocate and free entries and nodes; every method runs under the lock."""

    def __init__(self, mm: mmap.mmap, geometry: Geometry) -> None:
        self.mm = mm
        self.entries = geometry.entries
        self.nodes = geometry.nodes
        self.n_entries = geometry.n_entries
        self.n_nodes = geometry.n_nodes

    def alloc_entry(self, j: Journal) -> int:
        """A free entry's index, or NIL when the pool is exhausted (the table may reclaim)."""
        return self._alloc(j, ENTRY_FREE, ENTRY_BUMP, self.entries, ENTRY_SIZE, E_NEXT,
                           self.n_entries)  # fmt: skip

    def free_entry(self, j: Journal, idx: int) -> None:
        self._free(j, ENTRY_FREE, self.entries, ENTRY_SIZE, E_NEXT, idx)

    def alloc_node(self, j: Journal) -> int:
        idx = self._alloc(j, NODE_FREE, NODE_BUMP, self.nodes, NODE_SIZE, _NODE_LINK,
                          self.n_nodes)  # fmt: skip
        if idx == NIL:
            raise ChannelFull(
                f"IPC segment has no free waiter nodes ({self.n_nodes} waiting receivers); "
                "raise `size`"
            )
        return idx

    def free_node(self, j: Journal, idx: int) -> None:
        """Return a node; its entry word becomes NIL so a scan can tell free from used."""
        off = self.nodes + idx * NODE_SIZE
        j.set_u32(off + _NODE_ENTRY, NIL)
        self._free(j, NODE_FREE, self.nodes, NODE_SIZE, _NODE_LINK, idx)

    def count(self, at: int, delta: int) -> None:
        """Adjust a G-block count (the caller's mutation has saved the G block)."""
        _u32_pack(self.mm, at, _u32_unpack(self.mm, at)[0] + delta)

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
