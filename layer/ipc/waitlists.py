"""Per-channel wait lists of receivers in the segment, and firing them into wake rings.

A receive that finds its channel empty links a node "instance W waits on channel C" at the tail
of the channel's wait list; a send that finds a waiter unlinks the first live node, marks it
fired and appends it to its owner's wake ring, and the sender rings the owner's doorbell.
"""

from __future__ import annotations

import mmap
import struct

from layer.ipc.journal import Journal
from layer.ipc.layout import (
    CHANNELS,
    E_WORDS,
    E_WORDS_SIZE,
    ENTRY_SIZE,
    ENTRY_WORDS,
    FIRED,
    NIL,
    NODE,
    NODE_SIZE,
    RING,
    SCRATCH,
    U32,
    W_OVERFLOW,
    W_READ,
    W_RING,
    W_STATE,
    W_WRITE,
    WAKER_SIZE,
    Geometry,
)
from layer.ipc.pools import Pools
from layer.ipc.table import Key, Table

_PAIR = struct.Struct("<II")  # a record's in use, generation; or its ring read, ring write
_RECORD_HEAD = struct.Struct("<IIII")  # in use, generation, ring read, ring write
_u32_pack = U32.pack_into
_u32_unpack = U32.unpack_from


class WaitLists:
    """Register, fire and withdraw waiter nodes; called with the lock held."""

    def __init__(self, mm: mmap.mmap, geometry: Geometry, table: Table, pools: Pools) -> None:
        self.mm = mm
        self.entries = geometry.entries
        self.mutable = geometry.entries + E_WORDS  # entry 0's kind-specific words
        self.nodes = geometry.nodes
        self.wakers = geometry.wakers
        self.table = table
        self.pools = pools

    def register(self, j: Journal, key: Key, waker: int, gen: int, spare: int) -> int:
        """Add a node "waker waits on this channel" at the tail of its wait list.

        ``spare`` is a fired node of the same waker to reuse, or NIL to allocate one.
        """
        name, h = key
        mm = self.mm
        idx = self.table.channel_entry(j, name, h)
        off = self.mutable + idx * ENTRY_SIZE
        five = ENTRY_WORDS.unpack_from(mm, off)
        head, tail, count, _, wait_tail = five
        if spare != NIL and wait_tail == NIL:  # the hot path: alone on the list, a spare node
            at = self.nodes + spare * NODE_SIZE
            j.register_op(at, off, five, CHANNELS)
            NODE.pack_into(mm, at, NIL, NIL, idx, waker, gen)
            ENTRY_WORDS.pack_into(mm, off, head, tail, count, spare, spare)
            if not count:  # the channel was idle
                _u32_pack(mm, CHANNELS, _u32_unpack(mm, CHANNELS)[0] + 1)
            return spare
        node = self.pools.alloc_node(j) if spare == NIL else spare
        # Saved however it came: a node from the free list still has the words of its last
        # use, and a rollback that left ours on it made a free node that names a waiter (the
        # reaper then freed it twice, looping the free list: found by layer.ipc.check).
        j.save(self.nodes + node * NODE_SIZE, NODE_SIZE)
        wait_head = five[3]
        NODE.pack_into(mm, self.nodes + node * NODE_SIZE, wait_tail, NIL, idx, waker, gen)
        j.save(off, E_WORDS_SIZE)
        if wait_tail == NIL:
            wait_head = node
        else:
            at = self.nodes + wait_tail * NODE_SIZE + 4
            j.set_u32(at, node)
        ENTRY_WORDS.pack_into(mm, off, head, tail, count, wait_head, node)
        if not count and wait_tail == NIL:  # the channel was idle
            j.save_g()
            self.pools.count(CHANNELS, 1)
        return node

    def fired(self, node: int) -> bool:
        """True once a send has taken ``node`` off its list and queued it in its waker's ring."""
        return bool(_u32_unpack(self.mm, self.nodes + node * NODE_SIZE)[0] == FIRED)

    def unregister(self, j: Journal, node: int) -> int:
        """Withdraw a node: unlink and free it; a fired one passes its wake on (the waker to
        post is returned, or NIL)."""
        at = self.nodes + node * NODE_SIZE
        prev, _, idx, _, _ = NODE.unpack_from(self.mm, at)
        if prev != FIRED:
            self._unlink(j, node)
            self.pools.free_node(j, node)
            return NIL
        self.pools.free_node(j, node)
        return self.pass_on(j, idx)

    def pass_on(self, j: Journal, idx: int) -> int:
        """A wake for channel ``idx`` went unused: fire the next waiter if messages remain."""
        off = self.entries + idx * ENTRY_SIZE + E_WORDS
        count, wait_head = ENTRY_WORDS.unpack_from(self.mm, off)[2:4]
        return self.fire(j, idx) if count and wait_head != NIL else NIL

    def fire(self, j: Journal, idx: int) -> int:
        """Hand a wake to the first live waiter of channel ``idx``; return its waker or NIL.

        Nodes of dead instances before it are freed on the way, each in a journal step of its
        own: the caller must be at a consistent point, and every step commits what came before
        (a channel can hold the nodes of up to 256 dead instances; in one step they overflowed
        the journal).
        """
        mm = self.mm
        off = self.entries + idx * ENTRY_SIZE + E_WORDS
        while True:
            j.commit()
            node = ENTRY_WORDS.unpack_from(mm, off)[3]
            if node == NIL:
                return NIL
            at = self.nodes + node * NODE_SIZE
            _, _, _, waker, gen = NODE.unpack_from(mm, at)
            self._unlink(j, node)
            wat = self.wakers + waker * WAKER_SIZE
            state, wgen = _PAIR.unpack_from(mm, wat + W_STATE)
            if not state or wgen & 0xFFFF != gen:
                self.pools.free_node(j, node)  # its instance is gone
                continue
            j.set_u32(at, FIRED)
            read, write = _PAIR.unpack_from(mm, wat + W_READ)
            if write - read < RING:
                _u32_pack(mm, wat + W_RING + write * 4, node)  # past ``write``: no save needed
                j.set_u32(wat + W_WRITE, write + 1)
            else:
                j.set_u32(wat + W_OVERFLOW, 1)  # ring full: the owner rescans its nodes
            return int(waker)

    def fire_head(self, j: Journal, node: int, wait_tail: int) -> tuple[int, int, int] | None:
        """``fire`` for a push that has journaled its channel entry and will write it last:
        hand the wake to ``node``, the head of the wait list, if its instance is live and its
        ring has room; return ``(waker, wait_head, wait_tail)`` for the entry, or None (the
        caller then takes the general path)."""
        mm = self.mm
        at = self.nodes + node * NODE_SIZE
        prev, nxt, _, waker, gen = NODE.unpack_from(mm, at)
        wat = self.wakers + waker * WAKER_SIZE
        state, wgen, read, write = _RECORD_HEAD.unpack_from(mm, wat)
        if not state or wgen & 0xFFFF != gen or write - read >= RING:
            return None
        nat = SCRATCH if nxt == NIL else self.nodes + nxt * NODE_SIZE
        j.three_words(at, prev, nat, _u32_unpack(mm, nat)[0], wat + W_WRITE, write)
        _u32_pack(mm, at, FIRED)
        _u32_pack(mm, nat, NIL)
        _u32_pack(mm, wat + W_RING + write * 4, node)  # past ``write``: no save needed
        _u32_pack(mm, wat + W_WRITE, write + 1)
        return waker, nxt, (NIL if nxt == NIL else wait_tail)

    def _unlink(self, j: Journal, node: int) -> None:
        mm = self.mm
        at = self.nodes + node * NODE_SIZE
        prev, nxt, idx, _, _ = NODE.unpack_from(mm, at)
        off = self.entries + idx * ENTRY_SIZE + E_WORDS
        head, tail, count, wait_head, wait_tail = ENTRY_WORDS.unpack_from(mm, off)
        j.save(off, E_WORDS_SIZE)
        if prev == NIL:
            wait_head = nxt
        else:
            j.set_u32(self.nodes + prev * NODE_SIZE + 4, nxt)
        if nxt == NIL:
            wait_tail = prev
        else:
            j.set_u32(self.nodes + nxt * NODE_SIZE, prev)
        ENTRY_WORDS.pack_into(mm, off, head, tail, count, wait_head, wait_tail)
        if not count and wait_head == NIL:
            j.save_g()
            self.pools.count(CHANNELS, -1)
