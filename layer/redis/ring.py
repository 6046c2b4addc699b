"""Consistent hashing: a hash ring with virtual nodes, so resharding moves few channels.

channels_redis maps ``crc32 % N``: adding a server remaps almost every name. Here each shard
owns ``vnodes`` points on a 64-bit ring and a name belongs to the first point clockwise of its
hash, so adding one shard to N moves only about 1/(N+1) of the names.
"""

from __future__ import annotations

import bisect
import hashlib
from collections.abc import Sequence
from typing import Generic, TypeVar

from layer.flow import remember

T = TypeVar("T")

DEFAULT_VNODES = 160


def hash64(key: str) -> int:
    """A stable 64-bit hash (the same in every process and Python version)."""
    return int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8).digest(), "big")


class HashRing(Generic[T]):
    """Maps names to nodes; node identity is its ``name``, so order of ``hosts`` is irrelevant."""

    def __init__(self, nodes: Sequence[tuple[str, T]], vnodes: int = DEFAULT_VNODES) -> None:
        if not nodes:
            raise ValueError("a hash ring needs at least one node")
        points = sorted(
            (hash64(f"{name}#{i}"), index)
            for index, (name, _) in enumerate(nodes)
            for i in range(vnodes)
        )
        self._hashes = [h for h, _ in points]
        self._owners = [nodes[index][1] for _, index in points]
        self._single = nodes[0][1] if len(nodes) == 1 else None
        self._cache: dict[str, T] = {}

    def node_for(self, key: str) -> T:
        """The node that owns ``key``."""
        if self._single is not None:
            return self._single
        node = self._cache.get(key)
        if node is None:
            slot = bisect.bisect(self._hashes, hash64(key)) % len(self._hashes)
            node = self._owners[slot]
            remember(self._cache, key, node, 65536)
        return node
