"""Groups, flush and counts on top of the queues: the whole shared data structure.

A group entry heads a doubly linked list of member entries; a member is keyed by
``(group index, channel name)`` in the same hash table, so add/discard are O(1) and a group send
walks only that group's members, in one locked pass, committing the journal per member.
"""

from __future__ import annotations

import struct
from collections.abc import Callable

from layer.exceptions import ChannelFull
from layer.ipc.journal import Journal, bump_generation
from layer.ipc.layout import (
    CHANNELS,
    E_A,
    E_B,
    E_C,
    E_EXPIRES,
    E_MUTABLE,
    E_MUTABLE_SIZE,
    E_NAME,
    ENTRY_SIZE,
    EPOCH,
    F64,
    FIVE,
    G_OFF,
    GROUPS,
    KEY,
    NIL,
    OWNER_GROUP,
    QUEUED,
    U32,
    W_READ,
    WAKER_SIZE,
)
from layer.ipc.queues import Queues
from layer.ipc.table import Key, member_hash

_EMPTY_G = struct.Struct("<IIIIIIIIII").pack(NIL, 0, 0, 0, 0, NIL, 0, NIL, 0, 0)
_u32_pack = U32.pack_into
_u32_unpack = U32.unpack_from


class Store(Queues):
    """Everything the layer does to the segment, each call under the lock."""

    # -- groups -----------------------------------------------------------------------------

    def group_add(self, j: Journal, group: Key, channel: Key, expires: float) -> None:
        gname, gh = group
        gidx = self.find(OWNER_GROUP, gname, gh)
        if gidx == NIL:
            gidx = self.insert(j, OWNER_GROUP, gname, gh, (NIL, NIL, 0, NIL, NIL))
            self._count(GROUPS, 1)
        cname, ch = channel
        mh = member_hash(ch, gidx)
        midx = self.find(gidx, cname, mh)
        mm = self.mm
        if midx != NIL:
            at = self.entries + midx * ENTRY_SIZE + E_EXPIRES
            j.save(at, 8)
            F64.pack_into(mm, at, expires)
            return
        goff = self.entries + gidx * ENTRY_SIZE + E_MUTABLE
        first, last, members, _, _ = FIVE.unpack_from(mm, goff)
        midx = self.insert(j, gidx, cname, mh, (last, NIL, ch, NIL, NIL))
        F64.pack_into(mm, self.entries + midx * ENTRY_SIZE + E_EXPIRES, expires)
        j.save(goff, E_MUTABLE_SIZE)
        if last == NIL:
            first = midx
        else:
            at = self.entries + last * ENTRY_SIZE + E_B
            j.set_u32(at, midx)
        FIVE.pack_into(mm, goff, first, midx, members + 1, NIL, NIL)

    def group_discard(self, j: Journal, group: Key, channel: Key) -> None:
        gname, gh = group
        gidx = self.find(OWNER_GROUP, gname, gh)
        if gidx == NIL:
            return
        cname, ch = channel
        midx = self.find(gidx, cname, member_hash(ch, gidx))
        if midx != NIL:
            self._remove_member(j, gidx, midx)

    def group_send(
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
        gidx = self.find(OWNER_GROUP, gname, gh)
        if gidx == NIL:
            return 0, 0
        mm = self.mm
        delivered = dropped = 0
        midx = _u32_unpack(mm, self.entries + gidx * ENTRY_SIZE + E_A)[0]
        while midx != NIL:
            off = self.entries + midx * ENTRY_SIZE
            nxt, ch = _u32_unpack(mm, off + E_B)[0], _u32_unpack(mm, off + E_C)[0]
            if F64.unpack_from(mm, off + E_EXPIRES)[0] <= now:
                self._remove_member(j, gidx, midx)
            else:
                size = KEY.unpack_from(mm, off)[3]
                name = mm[off + E_NAME : off + E_NAME + size]
                try:
                    waker = self.push(j, (name, ch), payload, expires, capacity_of(name))[0]
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
        prev, nxt = FIVE.unpack_from(mm, self.entries + midx * ENTRY_SIZE + E_MUTABLE)[:2]
        goff = self.entries + gidx * ENTRY_SIZE + E_MUTABLE
        first, last, members, _, _ = FIVE.unpack_from(mm, goff)
        j.save(goff, E_MUTABLE_SIZE)
        if prev == NIL:
            first = nxt
        else:
            at = self.entries + prev * ENTRY_SIZE + E_B
            j.set_u32(at, nxt)
        if nxt == NIL:
            last = prev
        else:
            at = self.entries + nxt * ENTRY_SIZE + E_A
            j.set_u32(at, prev)
        FIVE.pack_into(mm, goff, first, last, members - 1, NIL, NIL)
        self.delete(j, midx)
        if members == 1:
            self.delete(j, gidx)
            self._count(GROUPS, -1)

    # -- flush and counts -------------------------------------------------------------------

    def flush(self) -> None:
        """Empty everything but the waker table; idempotent, so a crash mid-way is redone.

        Pools go back to "all never used", hash chains to empty; waiter nodes go too, so the
        epoch changes and every waiting instance re-registers when woken.
        """
        mm = self.mm
        bump_generation(mm)
        epoch = _u32_unpack(mm, EPOCH)[0]
        mm[G_OFF : G_OFF + len(_EMPTY_G)] = _EMPTY_G
        self.blocks.reset()
        _u32_pack(mm, EPOCH, (epoch + 1) & 0xFFFFFFFF)
        size = 4 * self.geometry.n_buckets
        mm[self.buckets : self.buckets + size] = b"\xff" * size
        for waker in range(self.geometry.n_wakers):
            at = self.wakers + waker * WAKER_SIZE + W_READ
            mm[at : at + 12] = bytes(12)

    def epoch(self) -> int:
        return int(_u32_unpack(self.mm, EPOCH)[0])

    def counts(self) -> tuple[int, int, int]:
        """Queued messages, channels and groups in the segment."""
        mm = self.mm
        return (_u32_unpack(mm, QUEUED)[0], _u32_unpack(mm, CHANNELS)[0],
                _u32_unpack(mm, GROUPS)[0])  # fmt: skip
