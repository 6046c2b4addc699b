"""Groups in the segment: a group entry heads a doubly linked list of member entries.

A member is keyed by ``(group index, channel name)`` in the same hash table, so add/discard
are O(1) and a group send walks only that group's members, in one locked pass, committing the
journal per member.
"""

from __future__ import annotations

import mmap
from collections.abc import Callable

from layer.exceptions import ChannelFull
from layer.ipc.journal import Journal
from layer.ipc.layout import (
    E_EXPIRES,
    E_NAME,
    E_WORDS,
    E_WORDS_SIZE,
    ENTRY_SIZE,
    ENTRY_WORDS,
    F64,
    GROUPS,
    KEY,
    M_HASH,
    M_NEXT,
    NIL,
    OWNER_GROUP,
    U32,
    Geometry,
)
from layer.ipc.pools import Pools
from layer.ipc.queues import Queues
from layer.ipc.table import Key, Table, member_hash

_u32_unpack = U32.unpack_from


class Groups:
    """Add, discard and send to group members; every method runs under the lock."""

    def __init__(
        self, mm: mmap.mmap, geometry: Geometry, table: Table, pools: Pools, queues: Queues
    ) -> None:
        self.mm = mm
        self.entries = geometry.entries
        self.table = table
        self.pools = pools
        self.queues = queues

    def add(self, j: Journal, group: Key, channel: Key, expires: float) -> None:
        gname, gh = group
        gidx = self.table.find(OWNER_GROUP, gname, gh)
        if gidx == NIL:
            gidx = self.table.insert(j, OWNER_GROUP, gname, gh, (NIL, NIL, 0, NIL, NIL))
            self.pools.count(GROUPS, 1)
        cname, ch = channel
        mh = member_hash(ch, gidx)
        midx = self.table.find(gidx, cname, mh)
        mm = self.mm
        if midx != NIL:
            at = self.entries + midx * ENTRY_SIZE + E_EXPIRES
            j.save(at, 8)
            F64.pack_into(mm, at, expires)
            return
        goff = self.entries + gidx * ENTRY_SIZE + E_WORDS
        first, last, members, _, _ = ENTRY_WORDS.unpack_from(mm, goff)
        midx = self.table.insert(j, gidx, cname, mh, (last, NIL, ch, NIL, NIL))
        F64.pack_into(mm, self.entries + midx * ENTRY_SIZE + E_EXPIRES, expires)
        j.save(goff, E_WORDS_SIZE)
        if last == NIL:
            first = midx
        else:
            at = self.entries + last * ENTRY_SIZE + M_NEXT
            j.set_u32(at, midx)
        ENTRY_WORDS.pack_into(mm, goff, first, midx, members + 1, NIL, NIL)

    def discard(self, j: Journal, group: Key, channel: Key) -> None:
        gname, gh = group
        gidx = self.table.find(OWNER_GROUP, gname, gh)
        if gidx == NIL:
            return
        cname, ch = channel
        midx = self.table.find(gidx, cname, member_hash(ch, gidx))
        if midx != NIL:
            self._remove_member(j, gidx, midx)

    def send(
        self,
        j: Journal,
        group: Key,
        payload: bytes,
        expires: float,
        now: float,
        capacity_of: Callable[[bytes], int],
        wake: list[int],
    ) -> tuple[int, int]:
        """Push to every live member, committing per member; wakers to post go to ``wake``."""
        gname, gh = group
        gidx = self.table.find(OWNER_GROUP, gname, gh)
        if gidx == NIL:
            return 0, 0
        mm = self.mm
        delivered = dropped = 0
        midx = _u32_unpack(mm, self.entries + gidx * ENTRY_SIZE + E_WORDS)[0]
        while midx != NIL:
            off = self.entries + midx * ENTRY_SIZE
            nxt, ch = _u32_unpack(mm, off + M_NEXT)[0], _u32_unpack(mm, off + M_HASH)[0]
            if F64.unpack_from(mm, off + E_EXPIRES)[0] <= now:
                self._remove_member(j, gidx, midx)
            else:
                size = KEY.unpack_from(mm, off)[3]
                name = mm[off + E_NAME : off + E_NAME + size]
                try:
                    waker = self.queues.push(j, (name, ch), payload, expires, capacity_of(name))[0]
                except ChannelFull:
                    j.rollback()
                    dropped += 1
                else:
                    delivered += 1
                    if waker != NIL:
                        wake.append(waker)
            j.commit()
            midx = nxt
        return delivered, dropped

    def _remove_member(self, j: Journal, gidx: int, midx: int) -> None:
        mm = self.mm
        prev, nxt = ENTRY_WORDS.unpack_from(mm, self.entries + midx * ENTRY_SIZE + E_WORDS)[:2]
        goff = self.entries + gidx * ENTRY_SIZE + E_WORDS
        first, last, members, _, _ = ENTRY_WORDS.unpack_from(mm, goff)
        j.save(goff, E_WORDS_SIZE)
        if prev == NIL:
            first = nxt
        else:
            at = self.entries + prev * ENTRY_SIZE + M_NEXT
            j.set_u32(at, nxt)
        if nxt == NIL:
            last = prev
        else:
            at = self.entries + nxt * ENTRY_SIZE + E_WORDS
            j.set_u32(at, prev)
        ENTRY_WORDS.pack_into(mm, goff, first, last, members - 1, NIL, NIL)
        self.table.delete(j, midx)
        if members == 1:
            self.table.delete(j, gidx)
            self.pools.count(GROUPS, -1)
