"""Entries: their format in Redis lists (a process keeps popped ones in ``mailboxes.py``).

The format is ``<13-digit expiry in ms><local part> <payload>``.

The expiry lets the server drop stale heads of a full list and receivers drop stale entries;
the local part (after ``!``, comma-separated for a group fan-out) routes a process-specific
message inside its process's inbox. Lua in :mod:`layer.redis.scripts` reads the same format.
"""

from __future__ import annotations

from layer.messages import Message

# A dict: a fan-out entry decoded once and shared by its local members; taking one copies it.
Popped = bytes | Message


def split_entry(entry: bytes) -> tuple[int, bytes, bytes]:
    """``(expires_at_ms, local_part, payload)`` of a list entry."""
    space = entry.index(b" ", 13)
    return int(entry[:13]), entry[13:space], entry[space + 1 :]


def make_entry(expires_at_ms: int, payload: bytes, local: bytes = b"") -> bytes:
    return b"%013d%s %s" % (expires_at_ms, local, payload)
