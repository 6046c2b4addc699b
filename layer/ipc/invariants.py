"""The invariants of an IPC segment, checked on a settled copy of it (``layer.ipc.check``).

Invariants: each slot, entry and node below its bump pointer is in one place only (a free list
or cache, as long as its free count, or a structure); no list has a cycle; queues, group member
lists and wait lists agree with their ends, counts and links (a message spans the extents
``extents.plan`` gives its length); the buddy lists, block caches, tags and counts agree
(``extents.check_lists``); QUEUED, CHANNELS, GROUPS agree with the entries; each entry is in its
hash's bucket, keys are unique; fired nodes are on no wait list, free ones name no entry; wake
rings have read <= write <= RING.
"""

from __future__ import annotations

import math
import zlib
from dataclasses import dataclass, field

from layer.ipc.blocks import check_lists
from layer.ipc.extents import plan
from layer.ipc.layout import (
    CHANNELS,
    E_EXPIRES,
    E_NAME,
    E_OWNER,
    E_WORDS,
    ENTRY_BUMP,
    ENTRY_FREE,
    ENTRY_SIZE,
    ENTRY_WORDS,
    F64,
    FIRED,
    G_OFF,
    GROUPS,
    JSTATE,
    JSTATE_OFF,
    KEY,
    M_HASH,
    M_NEXT,
    MSG,
    NIL,
    NODE,
    NODE_BUMP,
    NODE_FREE,
    NODE_SIZE,
    OWNER_CHANNEL,
    OWNER_GROUP,
    QUEUED,
    RING,
    U32,
    W_RING,
    WAKER,
    WAKER_SIZE,
    Geometry,
)  # fmt: skip
from layer.ipc.table import member_hash

MAX_PROBLEMS = 100  # more are counted, not listed
_FREE, _USED = 1, 2  # marks of a record: on its pool's free list, or reached from a structure
_KINDS = (OWNER_CHANNEL, OWNER_GROUP)  # an entry owned by anything else is a group member


@dataclass
class Report:
    """What ``verify`` found: ``problems`` (empty when consistent) and the segment's counts."""

    problems: list[str] = field(default_factory=list)
    channels: int = 0  # with messages or waiters
    queued: int = 0
    slots_used: int = 0
    slots_free: int = 0  # on the free list or never used
    groups: int = 0
    members: int = 0
    waiters: int = 0  # waiter nodes on channels' wait lists
    repaired: int = 0  # dead holders' mutations undone by the check's lock entry
    unlisted: int = 0  # problems beyond MAX_PROBLEMS

    @property
    def ok(self) -> bool:
        return not self.problems

    def summary(self) -> str:
        return (
            f"{self.channels} channels, {self.queued} queued messages, {self.slots_used} slots "
            f"used / {self.slots_free} free, {self.groups} groups, {self.members} members, "
            f"{self.waiters} waiters"
        )

    def problem(self, text: str) -> None:
        if len(self.problems) < MAX_PROBLEMS:
            self.problems.append(text)
        else:
            self.unlisted += 1


class Checker:
    """The checks of a settled copy ``b`` of a segment (from offset 0 to its last slot used)."""

    def __init__(self, b: bytearray, g: Geometry) -> None:
        self.b, self.g, self.r = b, g, Report()
        self.problem = self.r.problem
        self.data = g.slot_size - 4
        self.slots = bytearray(self._bump(G_OFF + 8, g.n_slots, "slot"))
        self.entries = bytearray(self._bump(ENTRY_BUMP, g.n_entries, "entry"))
        self.nodes = bytearray(self._bump(NODE_BUMP, g.n_nodes, "node"))
        self.names: dict[int, str] = {}

    def u32(self, off: int) -> int:
        return int(U32.unpack_from(self.b, off)[0])

    def entry(self, idx: int, at: int = 0) -> int:
        return self.g.entries + idx * ENTRY_SIZE + at

    def _bump(self, at: int, limit: int, pool: str) -> int:
        if (bump := self.u32(at)) > limit:
            self.problem(f"the {pool} bump pointer is {bump}, past the pool's {limit}")
        return min(bump, limit)

    def run(self) -> Report:
        g, r = self.g, self.r
        if Geometry.plan(g.size, g.slot_size) != g:
            self.problem(f"the geometry is not what size {g.size}, slot size {g.slot_size} plan")
        if JSTATE.unpack_from(self.b, JSTATE_OFF) != (0, 0):
            self.problem("the journal is not settled under the lock (undo records or a flush)")
        self._free_list("slot", G_OFF, G_OFF + 4, self.slots, g.slots, g.slot_size, 0)
        check_lists(self.b, g, self.slots, self.problem)
        self._free_list("entry", ENTRY_FREE, None, self.entries, g.entries, ENTRY_SIZE, 0)
        self._free_list("node", NODE_FREE, None, self.nodes, g.nodes, NODE_SIZE, 4)
        self._hash_chains()
        channels, groups = self._keys()
        self._groups(groups)
        for idx in channels:
            self._channel(idx)
        if self.u32(QUEUED) != r.queued:
            self.problem(f"QUEUED is {self.u32(QUEUED)} but the channels' counts sum to {r.queued}")
        if self.u32(CHANNELS) != r.channels:
            self.problem(f"CHANNELS is {self.u32(CHANNELS)} but {r.channels} channels are active")
        self._leaked(self.slots, "slots are neither free nor queued", "slot")
        self._nodes_left()
        self._wakers()
        r.groups = len(groups)
        r.slots_used = self.slots.count(_USED)
        r.slots_free = self.slots.count(_FREE) + g.n_slots - len(self.slots)
        return r

    def _free_list(
        self, pool: str, head: int, count: int | None, marks: bytearray, base: int, stride: int,
        link: int,
    ) -> None:  # fmt: skip
        """Walk a pool's free list, marking its records; no cycle, nothing past the bump."""
        cur, n = self.u32(head), 0
        while cur != NIL:
            if cur >= len(marks) or marks[cur]:
                why = "has a cycle" if cur < len(marks) else "goes past the bump"
                self.problem(f"the free {pool} list {why} at {pool} {cur}")
                break
            marks[cur] = _FREE
            n += 1
            at = base + cur * stride
            # A reaper takes any node below the bump that names an entry for a waiter. (A free
            # entry may keep its owner: the reclaim sweep runs only when none is free.)
            if pool == "node" and (entry := self.u32(at + 8)) != NIL:
                self.problem(f"node {cur} is on the free node list but names entry {entry}")
            cur = self.u32(at + link)
        if count is not None and self.u32(count) != n:
            self.problem(f"the free {pool} count is {self.u32(count)} but its list holds {n}")

    def _hash_chains(self) -> None:
        """Every used entry is reached from exactly one bucket: the one of its hash."""
        g, marks = self.g, self.entries
        for bucket in range(g.n_buckets):
            cur = self.u32(g.buckets + 4 * bucket)
            while cur != NIL:
                if cur >= len(marks) or marks[cur]:
                    why = _where(marks, cur, "on the free list", "reached twice")
                    self.problem(f"bucket {bucket}'s chain reaches entry {cur}, {why}")
                    break
                marks[cur] = _USED
                nxt, h, _, _ = KEY.unpack_from(self.b, self.entry(cur))
                if h & (g.n_buckets - 1) != bucket:
                    self.problem(f"entry {cur} is in bucket {bucket}, not its hash's")
                cur = nxt
        self._leaked(marks, "entries are neither free nor in a hash chain", "entry")

    def _keys(self) -> tuple[list[int], list[int]]:
        """Check each used entry's key; return the channel and group entries."""
        channels: list[int] = []
        groups: list[int] = []
        keys: dict[tuple[int, bytes], int] = {}
        for idx in range(len(self.entries)):
            if self.entries[idx] != _USED:
                continue
            off = self.entry(idx)
            _, h, owner, size = KEY.unpack_from(self.b, off)
            name = bytes(self.b[off + E_NAME : off + E_NAME + min(size, ENTRY_SIZE - E_NAME)])
            self.names[idx] = text = repr(name.decode("ascii", "replace"))
            if not 0 < size <= ENTRY_SIZE - E_NAME:
                self.problem(f"entry {idx} ({text}) has a name length of {size}")
            if (owner, name) in keys:
                self.problem(f"entries {keys[owner, name]} and {idx} have one key ({text})")
            keys[owner, name] = idx
            if owner in _KINDS:
                (channels if owner == OWNER_CHANNEL else groups).append(idx)
                if zlib.crc32(name) != h:
                    self.problem(f"entry {idx} ({text}) has a hash not of its name")
                continue
            ch = self.u32(off + M_HASH)
            group = owner < len(self.entries) and self.entries[owner] == _USED
            if not group or self.u32(self.entry(owner, E_OWNER)) != OWNER_GROUP:
                self.problem(f"member entry {idx} ({text}) names {owner}, not a group")
            elif zlib.crc32(name) != ch or member_hash(ch, owner) != h:
                self.problem(f"member entry {idx} ({text}) has a hash not of its key")
            if not math.isfinite(F64.unpack_from(self.b, off + E_EXPIRES)[0]):
                self.problem(f"member entry {idx} ({text}) has no finite expiry")
        return channels, groups

    def _groups(self, groups: list[int]) -> None:
        """Each group's doubly linked member list: links, ends, count, members' owner."""
        listed: set[int] = set()
        for gidx in groups:
            group = self.names[gidx]
            first, last, count, _, _ = ENTRY_WORDS.unpack_from(self.b, self.entry(gidx, E_WORDS))
            prev, cur, n = NIL, first, 0
            while cur != NIL:
                if cur >= len(self.entries) or self.entries[cur] != _USED or cur in listed:
                    self.problem(f"group {group}'s member list reaches entry {cur}, no member")
                    break
                listed.add(cur)
                n += 1
                member = self.names[cur]
                if (owner := self.u32(self.entry(cur, E_OWNER))) != gidx:
                    self.problem(f"member {member} on group {group}'s list names owner {owner}")
                if self.u32(self.entry(cur, E_WORDS)) != prev:
                    self.problem(f"member {member} of group {group} has a wrong prev")
                prev, cur = cur, self.u32(self.entry(cur, M_NEXT))
            if prev != last:
                self.problem(
                    f"group {group}'s last member is entry {last}, its list ends at {prev}"
                )
            if n != count or not n:
                self.problem(f"group {group} counts {count} members, its list holds {n}")
            self.r.members += n
        for idx, name in self.names.items():
            if self.u32(self.entry(idx, E_OWNER)) not in _KINDS and idx not in listed:
                self.problem(f"member entry {idx} ({name}) is on no group's member list")
        if self.u32(GROUPS) != len(groups):
            self.problem(f"GROUPS is {self.u32(GROUPS)} but there are {len(groups)} group entries")

    def _channel(self, idx: int) -> None:
        head, tail, count, wait_head, wait_tail = ENTRY_WORDS.unpack_from(
            self.b, self.entry(idx, E_WORDS)
        )
        self.r.queued += count
        self.r.channels += bool(count) or wait_head != NIL
        if count:
            self._queue(self.names[idx], head, tail, count)
        elif (head, tail) != (NIL, NIL):
            self.problem(f"channel {self.names[idx]} has no messages but a head or a tail")
        self._wait_list(idx, wait_head, wait_tail)

    def _queue(self, name: str, head: int, tail: int, count: int) -> None:
        """Walk ``count`` messages from ``head``: each a chain of extents of the orders
        ``extents.plan`` gives its length, aligned, which no other message and no free list
        holds, the last message's last extent ``tail``."""
        g, marks = self.g, self.slots
        cur, last, n = head, NIL, 0
        while n < count:
            if last == tail and n:
                self.problem(f"channel {name} counts {count} messages, its tail comes after {n}")
                return
            if cur >= len(marks):
                self.problem(f"channel {name}'s message {n} starts at slot {cur}, past the bump")
                return
            length, expires = MSG.unpack_from(self.b, g.slots + cur * g.slot_size + 4)
            if not length + MSG.size <= len(marks) * g.slot_size or not math.isfinite(expires):
                self.problem(f"channel {name}'s message {n} has length {length}, expiry {expires}")
                return
            orders = plan(length + MSG.size, g.slot_size, g.max_order)
            for i, order in enumerate(orders):
                size = 1 << order
                if cur % size or cur + size > len(marks) or any(marks[cur : cur + size]):
                    where = _where(marks, cur, "on a free list", "in another message")
                    self.problem(f"channel {name}'s message {n} reaches slot {cur}, {where}")
                    return
                marks[cur : cur + size] = bytes([_USED]) * size
                last = cur
                if i < len(orders) - 1:
                    cur = self.u32(g.slots + cur * g.slot_size)
            n += 1
            cur = self.u32(g.slots + last * g.slot_size)
        if last != tail:
            self.problem(
                f"channel {name}'s tail is slot {tail}, its {count} messages end at {last}"
            )

    def _wait_list(self, idx: int, head: int, tail: int) -> None:
        name, marks = self.names[idx], self.nodes
        prev, cur = NIL, head
        while cur != NIL:
            if cur >= len(marks) or marks[cur]:
                why = _where(marks, cur, "a free node", "on a wait list already")
                self.problem(f"channel {name}'s wait list reaches node {cur}, {why}")
                return
            marks[cur] = _USED
            self.r.waiters += 1
            p, nxt, entry, _, _ = NODE.unpack_from(self.b, self.g.nodes + cur * NODE_SIZE)
            if p == FIRED:
                self.problem(f"fired node {cur} is still on channel {name}'s wait list")
            elif p != prev:
                self.problem(f"node {cur} on channel {name}'s wait list has a wrong prev")
            if entry != idx:
                self.problem(f"node {cur} on channel {name}'s wait list names entry {entry}")
            prev, cur = cur, nxt
        if prev != tail:
            self.problem(f"channel {name}'s wait tail is node {tail}, its list ends at {prev}")

    def _nodes_left(self) -> None:
        """Nodes on no list must be fired (their waker's until it reuses or frees them)."""
        for node in range(len(self.nodes)):
            if self.nodes[node]:
                continue
            prev, _, entry, _, _ = NODE.unpack_from(self.b, self.g.nodes + node * NODE_SIZE)
            if entry == NIL:
                self.problem(f"node {node} is free but not on the free node list (leaked)")
            elif prev != FIRED:
                self.problem(f"node {node} waits on entry {entry} but is on no wait list")

    def _leaked(self, marks: bytearray, what: str, record: str) -> None:
        if n := marks.count(0):
            self.problem(f"{n} {what} (leaked), e.g. {record} {marks.find(0)}")

    def _wakers(self) -> None:
        for waker in range(self.g.n_wakers):
            at = self.g.wakers + waker * WAKER_SIZE
            state, _, read, write, overflow, spinning = WAKER.unpack_from(self.b, at)
            if not read <= write <= RING:
                self.problem(f"waker {waker}'s ring has read {read}, write {write} (of {RING})")
                continue
            if state > 1 or overflow > 1 or spinning > 1:
                self.problem(f"waker {waker} has flags {state}, {overflow}, {spinning}, not 0/1")
            for i in range(read, write):
                if (node := self.u32(at + W_RING + 4 * i)) >= len(self.nodes):
                    self.problem(f"waker {waker}'s ring holds node {node}, past the bump")


def _where(marks: bytearray, idx: int, free: str, used: str) -> str:
    if idx >= len(marks):
        return "past the bump pointer"
    return free if marks[idx] == _FREE else used
