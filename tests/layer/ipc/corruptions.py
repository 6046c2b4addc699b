"""A segment in a known state (``Known``) and a catalogue of corruptions written into its bytes
(``CORRUPTIONS``: each with a fragment of the problem ``verify`` must report), for
``test_check.py``."""

from __future__ import annotations

import asyncio
import contextlib
import mmap
import zlib
from collections.abc import Callable, Iterator

from layer.ipc import IPCChannelLayer
from layer.ipc.layout import (
    CHANNELS,
    E_NAME,
    E_OWNER,
    E_WORDS,
    ENTRY_BUMP,
    ENTRY_FREE,
    ENTRY_SIZE,
    FIRED,
    G_OFF,
    GROUPS,
    M_NEXT,
    NIL,
    NODE_FREE,
    NODE_SIZE,
    OWNER_CHANNEL,
    OWNER_GROUP,
    QUEUED,
    U32,
    W_READ,
    WAKER_SIZE,
)
from layer.ipc.storage import Storage
from layer.ipc.table import make_key, member_hash

Factory = Callable[..., IPCChannelLayer]
Writes = list[tuple[int, bytes]]


def u32(store: Storage, off: int) -> int:
    return int(U32.unpack_from(store.mm, off)[0])


def w32(off: int, value: int) -> tuple[int, bytes]:
    return off, U32.pack(value)


def entry(store: Storage, name: str, group: str | None = None) -> int:
    """Offset of the entry of channel ``name`` (or of group ``name``, or of member ``name``
    of ``group``)."""
    data, h = make_key(name)
    if group is None:
        idx = store.table.channel_index(data, h)
        if idx == NIL:
            idx = store.table.find(OWNER_GROUP, data, h)
    else:
        gidx = store.table.find(OWNER_GROUP, *make_key(group))
        idx = store.table.find(gidx, data, member_hash(h, gidx))
    assert idx != NIL, name
    return store.geometry.entries + idx * ENTRY_SIZE


def slot(store: Storage, idx: int) -> int:
    return store.geometry.slots + idx * store.geometry.slot_size


def node(store: Storage, idx: int) -> int:
    return store.geometry.nodes + idx * NODE_SIZE


class Known:
    """A segment in a known state: every structure the check walks has something in it.

    Channel ``q``: four one-slot messages; ``big``: one message of several slots; ``gone``:
    emptied (its slots on the free list); group ``g``: members m1..m3 (m0 discarded: a free
    entry); channel ``w``: two waiters (of ``b`` then ``c``); ``f``: b's node fired (a spare);
    ``x``: a cancelled receive (a free node).
    """

    def __init__(self, factory: Factory) -> None:
        self.a, self.b, self.c = factory(capacity=1000), factory(), factory()
        self.store = self.a.parts.storage
        self.pending: list[asyncio.Future[dict]] = []

    async def build(self) -> None:
        a, b, c = self.a, self.b, self.c
        for i in range(4):
            await a.send("q", {"type": "q", "i": i})
        await a.send("big", {"type": "big", "data": bytes(1500)})
        for i in range(3):
            await a.send("gone", {"type": "gone", "i": i})
        await a.stats()  # the outbox goes to the segment
        for _ in range(3):
            await b.receive("gone")
        self.pending += [asyncio.ensure_future(b.receive("w"))]
        await asyncio.sleep(0.01)
        self.pending += [asyncio.ensure_future(c.receive("w"))]
        cancelled = asyncio.ensure_future(c.receive("x"))
        fired = asyncio.ensure_future(b.receive("f"))
        await asyncio.sleep(0.01)
        cancelled.cancel()
        await a.send("f", {"type": "f"})
        assert (await asyncio.wait_for(fired, 10))["type"] == "f"
        for member in ("m0", "m1", "m2", "m3"):
            await a.group_add("g", member)
        await a.group_discard("g", "m0")  # last: nothing takes its entry off the free list
        await a.stats()
        assert not b.debug_state().held

    def close(self) -> None:
        for future in self.pending:
            future.cancel()

    def head_tail_count(self, name: str) -> tuple[int, int, int]:
        off = entry(self.store, name) + E_WORDS
        return u32(self.store, off), u32(self.store, off + 4), u32(self.store, off + 8)

    def last_free_slot(self) -> int:
        cur = u32(self.store, G_OFF)
        while (nxt := u32(self.store, slot(self.store, cur))) != NIL:
            cur = nxt
        return cur


def free_entry(store: Storage) -> int:
    idx = u32(store, ENTRY_FREE)
    assert idx != NIL
    return idx


def empty_bucket(store: Storage) -> int:
    for bucket in range(store.geometry.n_buckets):
        if u32(store, store.geometry.buckets + 4 * bucket) == NIL:
            return store.geometry.buckets + 4 * bucket
    raise AssertionError("no empty bucket")


@contextlib.contextmanager
def written(mm: mmap.mmap, writes: Writes) -> Iterator[None]:
    """The segment with ``writes`` in it, restored afterwards."""
    saved = [(off, mm[off : off + len(data)]) for off, data in writes]
    for off, data in writes:
        mm[off : off + len(data)] = data
    try:
        yield
    finally:
        for off, data in reversed(saved):
            mm[off : off + len(data)] = data


# Each corruption: the words to write into the segment, and a phrase the report must contain.
def slot_free_and_queued(k: Known) -> Writes:
    s, (_, tail, _) = k.store, k.head_tail_count("q")
    free, nfree = u32(s, G_OFF), u32(s, G_OFF + 4)
    return [w32(G_OFF, tail), w32(G_OFF + 4, nfree + 1), w32(slot(s, tail), free)]


def queue_count(k: Known) -> Writes:
    return [w32(entry(k.store, "q") + E_WORDS + 8, 5)]


def queued_total(k: Known) -> Writes:
    return [w32(QUEUED, u32(k.store, QUEUED) + 1)]


def channels_total(k: Known) -> Writes:
    return [w32(CHANNELS, u32(k.store, CHANNELS) - 1)]


def groups_total(k: Known) -> Writes:
    return [w32(GROUPS, 2)]


def member_prev(k: Known) -> Writes:
    return [w32(entry(k.store, "m2", "g") + E_WORDS, NIL)]


def member_next(k: Known) -> Writes:  # m1 -> m3: m2 is skipped, on no member list
    m3 = (entry(k.store, "m3", "g") - k.store.geometry.entries) // ENTRY_SIZE
    return [w32(entry(k.store, "m1", "g") + M_NEXT, m3)]


def member_count(k: Known) -> Writes:
    return [w32(entry(k.store, "g") + E_WORDS + 8, 5)]


def member_owner(k: Known) -> Writes:
    return [w32(entry(k.store, "m1", "g") + E_OWNER, OWNER_CHANNEL - 7)]


def bucket_to_free_entry(k: Known) -> Writes:
    return [w32(empty_bucket(k.store), free_entry(k.store))]


def chain_to_free_entry(k: Known) -> Writes:  # the end of q's hash chain
    off = entry(k.store, "q")
    while (nxt := u32(k.store, off)) != NIL:
        off = k.store.geometry.entries + nxt * ENTRY_SIZE
    return [w32(off, free_entry(k.store))]


def entry_hash(k: Known) -> Writes:
    off = entry(k.store, "q")
    return [w32(off + 4, zlib.crc32(b"q") ^ 0x55)]


def entry_name(k: Known) -> Writes:  # a channel renamed in place: its hash is not its name's
    return [(entry(k.store, "big") + E_NAME, b"bag")]


def duplicate_key(k: Known) -> Writes:  # channel "big" becomes a second "gone"
    off, gone = entry(k.store, "big"), entry(k.store, "gone")
    return [(off + 4, k.store.mm[gone + 4 : gone + 16]), (off + E_NAME, b"gone")]


def entry_leaked(k: Known) -> Writes:
    return [
        w32(ENTRY_FREE, u32(k.store, k.store.geometry.entries + free_entry(k.store) * ENTRY_SIZE))
    ]


def entry_bump(k: Known) -> Writes:
    return [w32(ENTRY_BUMP, k.store.geometry.n_entries + 3)]


def slot_leaked(k: Known) -> Writes:
    s = k.store
    head = u32(s, G_OFF)
    return [w32(G_OFF, u32(s, slot(s, head))), w32(G_OFF + 4, u32(s, G_OFF + 4) - 1)]


def free_slot_cycle(k: Known) -> Writes:
    return [w32(slot(k.store, k.last_free_slot()), u32(k.store, G_OFF))]


def free_slot_count(k: Known) -> Writes:
    return [w32(G_OFF + 4, u32(k.store, G_OFF + 4) + 2)]


def slot_in_two_messages(k: Known) -> Writes:  # big's head is q's head: one slot, two channels
    head, _, _ = k.head_tail_count("q")
    return [w32(entry(k.store, "big") + E_WORDS, head)]


def queue_tail(k: Known) -> Writes:  # a free slot
    return [w32(entry(k.store, "q") + E_WORDS + 4, u32(k.store, G_OFF))]


def message_length(k: Known) -> Writes:
    head, _, _ = k.head_tail_count("q")
    return [w32(slot(k.store, head) + 4, 0xFFFFFF00)]


def wait_prev(k: Known) -> Writes:
    off = entry(k.store, "w") + E_WORDS
    return [w32(node(k.store, u32(k.store, off + 16)), NIL)]  # the tail's prev


def fired_on_list(k: Known) -> Writes:
    return [w32(node(k.store, u32(k.store, entry(k.store, "w") + E_WORDS + 12)), FIRED)]


def wait_tail(k: Known) -> Writes:
    off = entry(k.store, "w") + E_WORDS
    return [w32(off + 16, u32(k.store, off + 12))]


def node_off_list(k: Known) -> Writes:  # the head waiter unlinked from w's list only
    off = entry(k.store, "w") + E_WORDS
    second = u32(k.store, off + 16)
    return [w32(off + 12, second), w32(node(k.store, second), NIL)]


def node_leaked(k: Known) -> Writes:
    first = u32(k.store, NODE_FREE)
    assert first != NIL
    return [w32(NODE_FREE, u32(k.store, node(k.store, first) + 4))]


def node_entry(k: Known) -> Writes:
    off = entry(k.store, "w") + E_WORDS
    return [w32(node(k.store, u32(k.store, off + 12)) + 8, 0)]


def free_node_named(k: Known) -> Writes:  # looks like a live waiter to a reaper's scan
    return [w32(node(k.store, u32(k.store, NODE_FREE)) + 8, 0)]


def waker_ring(k: Known) -> Writes:
    at = k.store.geometry.wakers + k.b.debug_state().waker * WAKER_SIZE + W_READ
    return [w32(at, 5), w32(at + 4, 2)]


CORRUPTIONS: list[tuple[Callable[[Known], Writes], str]] = [
    (slot_free_and_queued, "reaches slot {}, on a free list"),
    (slot_in_two_messages, "in another message"),
    (slot_leaked, "1 slots are neither free nor queued (leaked), e.g. slot"),
    (free_slot_cycle, "the free slot list has a cycle"),
    (free_slot_count, "the free slot count is"),
    (queue_count, "counts 5 messages, its tail comes after 4"),
    (queue_tail, "its 4 messages end at"),
    (message_length, "has length 4294967040"),
    (queued_total, "QUEUED is"),
    (channels_total, "CHANNELS is"),
    (groups_total, "GROUPS is 2 but there are 1 group entries"),
    (member_prev, "of group 'g' has a wrong prev"),
    (member_next, "is on no group's member list"),
    (member_count, "group 'g' counts 5 members, its list holds 3"),
    (member_owner, "not a group"),
    (bucket_to_free_entry, "on the free list"),
    (chain_to_free_entry, "on the free list"),
    (entry_hash, "not its hash's"),
    (entry_name, "has a hash not of its name"),
    (duplicate_key, "have one key ('gone')"),
    (entry_leaked, "1 entries are neither free nor in a hash chain (leaked), e.g. entry"),
    (entry_bump, "the entry bump pointer is"),
    (wait_prev, "wait list has a wrong prev"),
    (fired_on_list, "is still on channel 'w''s wait list"),
    (wait_tail, "wait tail is node"),
    (node_off_list, "is on no wait list"),
    (node_leaked, "free but not on the free node list (leaked)"),
    (node_entry, "wait list names entry 0"),
    (free_node_named, "is on the free node list but names entry 0"),
    (waker_ring, "ring has read 5, write 2"),
]
