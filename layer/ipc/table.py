"""The segment's hash table: channels, groups and group members by ``(owner, name)``.

Chained buckets keyed with a CRC-32 of the name (Python's ``hash`` differs per process); the
records come from the entry pool (:mod:`layer.ipc.pools`). An emptied channel keeps its entry
until the pool runs dry, when idle ones are reclaimed in one amortised sweep.
"""

from __future__ import annotations

import mmap
import zlib

from layer.exceptions import ChannelFull
from layer.flow import remember
from layer.ipc.journal import Journal, bump_generation
from layer.ipc.layout import (
    E_NAME,
    E_NEXT,
    E_OWNER,
    E_WORDS,
    ENTRY_BUMP,
    ENTRY_SIZE,
    ENTRY_WORDS,
    KEY,
    NIL,
    OWNER_CHANNEL,
    TABLE_GEN,
    U32,
    Geometry,
)
from layer.ipc.pools import Pools

Key = tuple[bytes, int]  # a name's ASCII bytes and its CRC-32
_INDEX_CACHE = 8192
_KEY_CACHE = 8192

_u32_unpack = U32.unpack_from


def make_key(name: str) -> Key:
    data = name.encode("ascii")
    return data, zlib.crc32(data)


class Keys:
    """This process's keys of the names it uses: each name is encoded and hashed once."""

    def __init__(self) -> None:
        self.known: dict[str, Key] = {}  # the hot path's ``known.get(name) or of(name)``

    def of(self, name: str) -> Key:
        key = self.known.get(name)
        if key is None:
            key = make_key(name)
            remember(self.known, name, key, _KEY_CACHE)
        return key


def member_hash(channel_hash: int, group: int) -> int:
    """Hash of a membership: the channel's hash mixed with its group's entry index."""
    return (channel_hash + (group + 1) * 0x9E3779B1) & 0xFFFFFFFF


class Table:
    """Find, insert and delete entries; every mutating method takes the open journal."""

    def __init__(self, mm: mmap.mmap, geometry: Geometry, pools: Pools) -> None:
        self.mm = mm
        self.pools = pools
        self.buckets = geometry.buckets
        self.mask = geometry.n_buckets - 1
        self.entries = geometry.entries
        self.n_entries = geometry.n_entries
        self._index: dict[bytes, int] = {}  # channel name -> entry, valid for ``_index_gen``
        self._index_gen = -1

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

    def channel_entry(self, j: Journal, name: bytes, h: int) -> int:
        """The entry of channel ``name``, created empty if it has none yet."""
        idx = self.channel_index(name, h)
        if idx == NIL:
            idx = self.insert(j, OWNER_CHANNEL, name, h, (NIL, NIL, 0, NIL, NIL))
        return idx

    def insert(self, j: Journal, owner: int, name: bytes, h: int, words: tuple[int, ...]) -> int:
        """Create entry ``(owner, name)`` with its kind-specific ``words``; ChannelFull if none."""
        mm = self.mm
        idx = self.pools.alloc_entry(j)
        if idx == NIL and self._reclaim(j):
            idx = self.pools.alloc_entry(j)
        if idx == NIL:
            raise ChannelFull(
                f"IPC segment has no free entries ({self.n_entries} channels, groups "
                "and memberships); raise `size` or drain channels"
            )
        off = self.entries + idx * ENTRY_SIZE
        bucket = self.buckets + ((h & self.mask) << 2)
        KEY.pack_into(mm, off, _u32_unpack(mm, bucket)[0], h, owner, len(name))
        ENTRY_WORDS.pack_into(mm, off + E_WORDS, *words)
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
        self.pools.free_entry(j, idx)

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
                _, _, count, wait_head, _ = ENTRY_WORDS.unpack_from(mm, off + E_WORDS)
                if not count and wait_head == NIL:
                    self.delete(j, idx)
                    j.commit()
                    freed += 1
        return freed
