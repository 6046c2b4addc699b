"""One inbox queue per receiving instance: every process-specific channel ``X!local`` is stored
in the queue of its routing name ``X!`` (the instance that made it with ``new_channel``).

An inbox entry is ``<u32 n> <n bytes: local parts, comma-separated> <payload>``: a direct send
carries its channel's local part, a group send one entry per receiving inbox carrying all of
that inbox's members (one copy of the payload, decoded once for them all when it is taken:
``layer.messages.shared``). The receiving instance takes its inbox in runs and demultiplexes
in its own memory: each message goes to a receive waiting on its channel, else is held for the
channel's next receive with the messages taken ahead (``ahead.py``), so a receive of ``X!a``
that finds entries for ``X!b`` keeps them here (they are this process's). It parks one waiter
node on the inbox, not one per channel. The Redis layer's inbox, for IPC
(docs/redis.md "Layout in Redis"); docs/ipc.md "Group sends and process-specific channels"
says why every send to such a channel takes it, and what capacity means then.
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
from layer.messages import Message, own, shared
from layer.names import valid_channel_name

log = logging.getLogger(__name__)

HEAD = struct.Struct("<I")  # the length of an entry's local parts
Route = tuple[str, Key, bytes]  # the queue a channel's sends go to, its key, their entry head
PARTS_CACHE = 1024  # local parts of recent entries (a group's entries repeat theirs)


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


def entry_head(parts: list[bytes]) -> bytes:
    """What precedes a group message's payload in the entry for several members of one inbox
    (their local parts)."""
    blob = b",".join(parts)
    return HEAD.pack(len(blob)) + blob


# Hands messages of one channel, in order, to the receives waiting on it, else holds them
# (``Handing.deliver``): payloads, or a fan-out's message decoded once (``shared``).
Deliver = Callable[[str, list[tuple[bytes | Message, float]]], None]
_head = HEAD.unpack_from


class Inboxes:
    """Takes runs off this instance's inboxes and hands each message to its channel (every
    method runs under the segment lock, whose mutex also guards the held messages)."""

    def __init__(self, takes: Takes, deliver: Deliver) -> None:
        self._takes = takes
        self._deliver = deliver
        self._names: dict[str, dict[bytes, list[str]]] = {}  # inbox -> local parts -> channels
        self._log = Throttled(log)  # entries no layer wrote: a flood costs a few lines
        self.malformed = 0  # such entries dropped (debug_state)

    def take(
        self, j: Journal, inbox: str, key: Key, want: str = "", most: int = PREFETCH + 1
    ) -> tuple[int, bytes | Message | None]:
        """Take up to ``most`` entries of ``inbox`` (one critical section, a journal step per
        run) and hand their messages out, per channel in order; return how many entries were
        taken (0: empty) and the first message for ``want``, which is not handed (a receive of
        it, with nothing held for it and none of its receives waiting, returns it). An entry
        for several members is decoded once (``shared``: each receive takes its own copy)."""
        taken = self._takes.take_run(j, key, time.monotonic(), most)
        if not taken:
            return 0, None
        names = self._names.get(inbox)
        if names is None:
            names = self._names[inbox] = {}
        runs: dict[str, list[tuple[bytes | Message, float]]] = {}
        got: bytes | Message | None = None
        last = None  # the channel of the last run appended to (most runs are one's)
        run: list[tuple[bytes | Message, float]] = []
        for entry, expires in taken:
            try:
                end = 4 + _head(entry)[0]
                if end > len(entry):
                    raise IndexError(end)
                channels = names[entry[4:end]]  # a large entry is an unhashable bytearray
            except (struct.error, IndexError, KeyError, TypeError):
                found = self._names_in(inbox, names, entry)
                if found is None:
                    continue
                channels, end = found, 4 + _head(entry)[0]
            item = (shared(entry[end:]) if len(channels) > 1 else entry[end:], expires)
            for channel in channels:  # the members share one item (a tuple: nothing to change)
                if channel is last:
                    run.append(item)
                elif channel == want and got is None:
                    got = own(item[0])
                else:
                    run = runs.get(channel) or runs.setdefault(channel, [])
                    run.append(item)
                    last = channel
        for channel, run in runs.items():
            self._deliver(channel, run)
        return len(taken), got

    def _names_in(
        self, inbox: str, names: dict[bytes, list[str]], entry: bytes
    ) -> list[str] | None:
        """The channels an entry's local parts name (remembered); None, logged and counted,
        if no layer wrote it (no room for its parts, a part that names no channel)."""
        if len(entry) >= 4 and 4 + _head(entry)[0] <= len(entry):
            parts = bytes(entry[4 : 4 + _head(entry)[0]])  # a large entry is a bytearray
            channels = _channels(inbox, parts)
            if channels is not None:
                remember(names, parts, channels, PARTS_CACHE)
                return channels
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
