"""Entries: their format in Redis lists, and the mailbox a process keeps popped ones in.

The format is ``<13-digit expiry in ms><local part> <payload>``.

The expiry lets the server drop stale heads of a full list and receivers drop stale entries;
the local part (after ``!``, comma-separated for a group fan-out) routes a process-specific
message inside its process's inbox. Lua in :mod:`layer.redis.scripts` reads the same format.
"""

from __future__ import annotations

import asyncio
from collections import deque

from layer.messages import Message

# A dict: a fan-out entry decoded once and shared by its local members; taking one copies it.
Popped = bytes | Message


def split_entry(entry: bytes) -> tuple[int, bytes, bytes]:
    """``(expires_at_ms, local_part, payload)`` of a list entry."""
    space = entry.index(b" ", 13)
    return int(entry[:13]), entry[13:space], entry[space + 1 :]


def make_entry(expires_at_ms: int, payload: bytes, local: bytes = b"") -> bytes:
    return b"%013d%s %s" % (expires_at_ms, local, payload)


class Mailbox:
    """Local state of one channel: entries popped but not yet received, and waiting receivers."""

    __slots__ = ("buffer", "channel", "inbox", "key", "returning", "waiters")

    def __init__(self, channel: str, key: str, inbox: bool) -> None:
        self.channel = channel
        self.key = key
        self.inbox = inbox
        self.buffer: deque[tuple[Popped, int]] = deque()  # (payload, expires_at_ms)
        self.waiters: deque[asyncio.Future[Popped]] = deque()
        self.returning = False
