"""One inbox queue per receiving instance: every process-specific channel ``X!local`` is stored
in the queue of its routing name ``X!`` (the instance that made it with ``new_channel``).

An inbox entry is ``<u32 n> <n bytes: local parts, comma-separated> <payload>``: a direct send
carries its channel's local part, a group send one entry per receiving inbox carrying all of
that inbox's members (one copy of the payload). The receiving instance takes its inbox in runs
and demultiplexes in its own memory: each message goes to a receive waiting on its channel,
else is held for the channel's next receive with the messages taken ahead (``ahead.py``), so a
receive of ``X!a`` that finds entries for ``X!b`` keeps them here (they are this process's). It
parks one waiter node on the inbox, not one per channel. The Redis layer's inbox, for IPC
(docs/redis.md "Layout in Redis"); docs/ipc.md "Group sends" says why every send takes it.
"""

from __future__ import annotations

import logging
import struct
import time
from collections.abc import Callable

from layer.flow import PREFETCH, remember
from layer.ipc.journal import Journal
from layer.ipc.table import Key, make_key
from layer.ipc.takes import Takes
from layer.logs import Throttled
from layer.names import valid_channel_name

log = logging.getLogger(__name__)

HEAD = struct.Struct("<I")  # the length of an entry's local parts
Route = tuple[str, Key, bytes]  # the queue a channel's sends go to, its key, their entry head
_PARTS_CACHE = 1024  # local parts of recent entries (a group's entries repeat theirs)


def route(channel: str) -> Route:
    """Where sends to ``channel`` go: its own queue (no head), or its inbox with its local
    part in front of each payload."""
    bang = channel.find("!")
    if bang < 0:
        return channel, make_key(channel), b""
    local = channel[bang + 1 :].encode("ascii")
    inbox = channel[: bang + 1]
    return inbox, make_key(inbox), HEAD.pack(len(local)) + local


def inbox_of(channel: str) -> str:
    """The queue a receive of ``channel`` waits on: its inbox if process-specific."""
    bang = channel.find("!")
    return channel if bang < 0 else channel[: bang + 1]


def fan_out_entry(parts: list[bytes], payload: bytes) -> bytes:
    """One group message for several members of one inbox (their local parts)."""
    blob = b",".join(parts)
    return HEAD.pack(len(blob)) + blob + payload


# Hands one message to the receive waiting on its channel, else holds it (``Handing.deliver``).
Deliver = Callable[[str, bytes, float], None]


class Inboxes:
    """Takes runs off this instance's inboxes and hands each message to its channel (every
    method runs under the segment lock, whose mutex also guards the held messages)."""

    def __init__(self, takes: Takes, deliver: Deliver, sweep: Callable[[float], None]) -> None:
        self._takes = takes
        self._deliver = deliver
        self._sweep = sweep  # expired messages held for channels nobody receives any more
        self._channels: dict[tuple[str, bytes], list[str] | None] = {}  # entry head -> names
        self._log = Throttled(log)  # entries no layer wrote: a flood costs a few lines
        self.malformed = 0  # such entries dropped (debug_state)

    def take(self, j: Journal, inbox: str, key: Key, most: int = PREFETCH + 1) -> int:
        """Take up to ``most`` entries of ``inbox`` (one critical section, a journal step per
        run) and hand their messages out; return how many entries were taken (0: empty)."""
        now = time.monotonic()
        taken = self._takes.take_run(j, key, now, most)
        deliver = self._deliver
        for entry, expires in taken:
            opened = self._open(inbox, entry)
            if opened is None:
                continue
            channels, payload = opened
            for channel in channels:
                deliver(channel, payload, expires)
        self._sweep(now)
        return len(taken)

    def _open(self, inbox: str, entry: bytes) -> tuple[list[str], bytes] | None:
        """The channels and payload of an entry; None (logged, counted) if no layer wrote it."""
        if len(entry) >= 4:
            end = 4 + HEAD.unpack_from(entry)[0]
            if end <= len(entry):
                head = (inbox, entry[4:end])
                channels = self._channels.get(head)
                if channels is None and head not in self._channels:
                    channels = _channels(inbox, head[1])
                    remember(self._channels, head, channels, _PARTS_CACHE)
                if channels is not None:
                    return channels, entry[end:]
        self.malformed += 1
        self._log(
            "entry", logging.ERROR, "dropped a malformed entry %.40r in IPC inbox %s", entry, inbox
        )
        return None


def _channels(inbox: str, parts: bytes) -> list[str] | None:
    """The channels an entry's local parts name, or None if one is not a channel name."""
    try:
        channels = [inbox + part for part in parts.decode("ascii").split(",")]
    except UnicodeDecodeError:
        return None
    ok = all(valid_channel_name(c) and c.count("!") == 1 for c in channels)
    return channels if ok else None
