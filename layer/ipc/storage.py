"""The shared data structure in one segment: its parts, built over one mapping, and flush.

Each part is a role (:mod:`pools` the record pools, :mod:`table` the hash table, :mod:`waitlists`
the receivers waiting per channel, :mod:`takes` and :mod:`queues` the two ends of a channel's
queue, :mod:`groups` the memberships, :mod:`extents` over :mod:`blocks` the arena); each gets
the parts it calls at construction, none inherits another. ``initialise`` writes the empty
structure of a new segment (``segment.attach`` calls it under its lock).
"""

from __future__ import annotations

import mmap
import struct

from layer.base import Counters
from layer.ipc.extents import Extents
from layer.ipc.groups import Groups
from layer.ipc.journal import bump_generation
from layer.ipc.layout import (
    CHANNELS,
    EPOCH,
    G_OFF,
    GEOMETRY,
    GEOMETRY_OFF,
    GROUPS,
    HEADER_SIZE,
    NIL,
    QUEUED,
    U32,
    W_READ,
    WAKER_SIZE,
    Geometry,
)
from layer.ipc.pools import Pools
from layer.ipc.queues import Queues
from layer.ipc.table import Table
from layer.ipc.takes import Takes
from layer.ipc.waitlists import WaitLists

_EMPTY_G = struct.Struct("<IIIIIIIIII").pack(NIL, 0, 0, 0, 0, NIL, 0, NIL, 0, 0)
_u32_unpack = U32.unpack_from


class Storage:
    """The parts of one segment's data structure; each call runs under the lock."""

    def __init__(self, mm: mmap.mmap, geometry: Geometry, counters: Counters) -> None:
        self.mm = mm
        self.geometry = geometry
        self.pools = Pools(mm, geometry)
        self.table = Table(mm, geometry, self.pools)
        self.extents = Extents(mm, geometry)
        self.blocks = self.extents.blocks
        self.waits = WaitLists(mm, geometry, self.table, self.pools)
        self.takes = Takes(mm, geometry, counters, self.table, self.extents)
        self.queues = Queues(
            mm, geometry, counters, self.table, self.extents, self.waits, self.takes
        )
        self.groups = Groups(mm, geometry, self.table, self.pools, self.queues)

    def flush(self) -> None:
        """Empty everything but the waker table; idempotent, so a crash mid-way is redone.

        Pools go back to "all never used", hash chains to empty; waiter nodes go too, so the
        epoch changes and every waiting instance re-registers when woken.
        """
        mm, g = self.mm, self.geometry
        bump_generation(mm)
        epoch = _u32_unpack(mm, EPOCH)[0]
        mm[G_OFF : G_OFF + len(_EMPTY_G)] = _EMPTY_G
        self.blocks.reset()
        U32.pack_into(mm, EPOCH, (epoch + 1) & 0xFFFFFFFF)
        size = 4 * g.n_buckets
        mm[g.buckets : g.buckets + size] = b"\xff" * size
        for waker in range(g.n_wakers):
            at = g.wakers + waker * WAKER_SIZE + W_READ
            mm[at : at + 12] = bytes(12)

    def epoch(self) -> int:
        """Bumped by every flush: waiter nodes registered before it are gone."""
        return int(_u32_unpack(self.mm, EPOCH)[0])

    def counts(self) -> tuple[int, int, int]:
        """Queued messages, channels and groups in the segment."""
        mm = self.mm
        return (_u32_unpack(mm, QUEUED)[0], _u32_unpack(mm, CHANNELS)[0],
                _u32_unpack(mm, GROUPS)[0])  # fmt: skip


def initialise(mm: mmap.mmap, geometry: Geometry) -> None:
    """Write the empty structure of a new segment, all but the magic (the caller's last word)."""
    mm[0:HEADER_SIZE] = bytes(HEADER_SIZE)
    GEOMETRY.pack_into(mm, GEOMETRY_OFF, *geometry.pack())
    mm[geometry.wakers : geometry.buckets] = bytes(geometry.buckets - geometry.wakers)
    Storage(mm, geometry, Counters()).flush()
