"""Groups in the segment: a group entry heads a doubly linked list of member entries.

A member is keyed by ``(group index, channel name)`` in the same hash table, so add/discard
are O(1) and a group send walks only that group's members, in one locked pass, committing the
journal per member.
"""

from __future__ import annotations

import math
import mmap
import struct
import zlib
from collections.abc import Callable

from layer.exceptions import ChannelFull
from layer.flow import remember
from layer.ipc.inbox import entry_head
from layer.ipc.journal import Journal
from layer.ipc.layout import (
    E_EXPIRES,
    E_NAME,
    E_OWNER,
    E_WORDS,
    E_WORDS_SIZE,
    ENTRY_SIZE,
    ENTRY_WORDS,
    F64,
    GROUPS,
    M_HASH,
    M_NEXT,
    NIL,
    OWNER_GROUP,
    TABLE_GEN,
    U32,
    Geometry,
)
from layer.ipc.pools import Pools
from layer.ipc.queues import Queues
from layer.ipc.table import Key, Table, member_hash

_u32_unpack = U32.unpack_from
# A member entry from its name length on: length, (prev), next, channel hash, (pad), lapses.
_MEMBER = struct.Struct("<I4xII12xd")
_MEMBER_AT = E_OWNER + 4  # the name length (KEY's last word)
assert _MEMBER_AT + 8 == M_NEXT and _MEMBER_AT + 12 == M_HASH
assert _MEMBER_AT + _MEMBER.size == E_EXPIRES + 8
_TARGETS = 16384  # members whose channel key and capacity this process remembers
_PLANS = 1024  # groups whose plan this process remembers
# A member's queue (its channel's, or its inbox's), capacity, and local part if in an inbox.
Target = tuple[Key, int, bytes | None]
# One push of a group send: the queue, its capacity, the head of the entry (an inbox's: its
# members' local parts; none for a normal channel) and how many members it reaches.
Push = tuple[Key, int, bytes, int]
# A group's fan-out plan (as the Redis layer's): valid for a signature (``_signature``) and
# until its first membership lapses; its pushes.
Plan = tuple[tuple[int, ...], float, list[Push]]


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
        # member entry -> its target, valid for ``_targets_gen``: an entry never changes its
        # name while it exists, and every delete bumps the generation.
        self._targets: dict[int, Target] = {}
        self._targets_gen = -1
        self._plans: dict[int, Plan] = {}  # group entry -> its plan (``_plan``)

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
        """Push to every live member, committing per push; wakers to post go to ``wake``.

        A normal channel gets its own copy; the process-specific members of one inbox share
        one entry carrying their local parts (``inbox.py``), checked against the inbox's
        capacity: a full inbox drops it for all of them (counted per member)."""
        gname, gh = group
        gidx = self.table.find(OWNER_GROUP, gname, gh)
        if gidx == NIL:
            return 0, 0
        plan = self._plans.get(gidx)
        if plan is None or plan[0] != self._signature(gidx) or now >= plan[1]:
            plan = self._plan(j, gidx, now, capacity_of)
            if plan is None:  # every member had lapsed: the group is gone
                return 0, 0
        push = self.queues.push
        delivered = dropped = 0
        for key, capacity, head, members in plan[2]:
            try:
                waker = push(j, key, head + payload if head else payload, expires, capacity)[0]
            except ChannelFull:
                j.rollback()
                dropped += members
            else:
                delivered += members
                if waker != NIL:
                    wake.append(waker)
            j.commit()
        return delivered, dropped

    def _signature(self, gidx: int) -> tuple[int, ...]:
        """What a plan of group ``gidx`` stays valid for: the table generation (bumped by every
        delete: a member discarded or lapsed, a group gone) and the group's member list ends
        and length (changed by every member added)."""
        mm = self.mm
        words = ENTRY_WORDS.unpack_from(mm, self.entries + gidx * ENTRY_SIZE + E_WORDS)
        return _u32_unpack(mm, TABLE_GEN)[0], *words[:3]

    def _plan(
        self, j: Journal, gidx: int, now: float, capacity_of: Callable[[bytes], int]
    ) -> Plan | None:
        """Walk group ``gidx``'s members, removing lapsed ones (a journal step each), and make
        its plan: one push per normal member, one per receiving inbox with the head of its
        entry (its members' local parts), valid until the first membership lapses."""
        mm, entries = self.mm, self.entries
        targets = self._targets
        gen = _u32_unpack(mm, TABLE_GEN)[0]
        if gen != self._targets_gen:
            targets.clear()
            self._targets_gen = gen
        inboxes: dict[bytes, tuple[Key, int, list[bytes]]] = {}
        pushes: list[Push] = []
        first_lapse = math.inf
        midx = _u32_unpack(mm, entries + gidx * ENTRY_SIZE + E_WORDS)[0]
        while midx != NIL:
            off = entries + midx * ENTRY_SIZE
            size, nxt, ch, lapses = _MEMBER.unpack_from(mm, off + _MEMBER_AT)
            if lapses <= now:
                last = self._remove_member(j, gidx, midx)
                j.commit()
                if last:
                    self._plans.pop(gidx, None)
                    return None
            else:
                first_lapse = min(first_lapse, lapses)
                target = targets.get(midx)
                if target is None:
                    target = _target(mm[off + E_NAME : off + E_NAME + size], ch, capacity_of)
                    remember(targets, midx, target, _TARGETS)
                key, capacity, local = target
                if local is None:
                    pushes.append((key, capacity, b"", 1))
                elif (inbox := inboxes.get(key[0])) is None:
                    inboxes[key[0]] = (key, capacity, [local])
                else:
                    inbox[2].append(local)
            midx = nxt
        for key, capacity, parts in inboxes.values():
            pushes.append((key, capacity, entry_head(parts), len(parts)))
        plan = (self._signature(gidx), first_lapse, pushes)
        remember(self._plans, gidx, plan, _PLANS)
        return plan

    def _remove_member(self, j: Journal, gidx: int, midx: int) -> bool:
        """Unlink member ``midx``; True when it was the last (the group is deleted too)."""
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
        return int(members) == 1


def _target(name: bytes, h: int, capacity_of: Callable[[bytes], int]) -> Target:
    """Where a member's copy goes: its channel's queue, or its inbox with its local part."""
    bang = name.find(b"!")
    if bang < 0:
        return (name, h), capacity_of(name), None
    inbox = name[: bang + 1]
    return (inbox, zlib.crc32(inbox)), capacity_of(name), name[bang + 1 :]
