"""``RedisChannelLayer``: the channel layer across hosts, sharded over Redis servers.

Routing: a channel's routing name (up to ``!``) picks its shard on a consistent-hash ring, so
every channel of one process lands on one shard and one inbox list; a group's membership lives
on the shard of its name. Per event loop (Django's ``async_to_sync`` may run each call in a
fresh loop) the layer keeps one pipelined command connection and one receive loop per shard.

Sends: one Lua call each, pipelined under credit (``sends.py``); receives: one multiplexing
loop per shard (``receiver.py``).
"""

from __future__ import annotations

import asyncio
import logging
import re
import threading
import time
import weakref
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from layer import names
from layer.base import BaseChannelLayer, StorageCounts
from layer.exceptions import InvalidOption
from layer.logs import Throttled
from layer.messages import Message, decode, encode_trusted
from layer.options import positive_number
from layer.redis.connection import Pipe
from layer.redis.crypto import Crypter, UndecryptableMessage
from layer.redis.hosts import ShardSpec, parse_hosts
from layer.redis.inbox import Inbox
from layer.redis.receiver import Receiver
from layer.redis.ring import HashRing
from layer.redis.scripts import FANOUT, GROUP_ADD, GROUP_DISCARD, GROUP_PLAN
from layer.redis.sends import Sends
from layer.redis.shard_errors import ShardRefused, ShardUnavailable, unavailable

log = logging.getLogger(__name__)

_BLOCK_TIMEOUT = 5.0  # seconds one BLMPOP waits before the loop looks again
_PREFIX_RE = re.compile(r"[A-Za-z0-9_.:\-]+")


@dataclass
class _Shard:
    pipe: Pipe
    receiver: Receiver


@dataclass
class _LoopState:
    """What one event loop uses: connections, receive loops, and its sends in flight."""

    shards: list[_Shard]
    sends: Sends


class RedisChannelLayer(BaseChannelLayer):
    """Drop-in for ``channels_redis.core.RedisChannelLayer`` (same CONFIG keys), much faster."""

    def __init__(
        self,
        *,
        hosts: Any = None,
        prefix: str = "asgi",
        symmetric_encryption_keys: Any = None,
        socket_timeout: float = 5.0,
        socket_connect_timeout: float | None = None,
        **options: Any,
    ) -> None:
        super().__init__(**options)
        if not isinstance(prefix, str) or not _PREFIX_RE.fullmatch(prefix):
            raise InvalidOption(
                f"prefix must be letters, digits, '.', '_', '-' or ':', got {prefix!r}"
            )
        self.prefix = prefix
        self.socket_timeout = positive_number("socket_timeout", socket_timeout)
        connect_timeout = positive_number(
            "socket_connect_timeout",
            self.socket_timeout if socket_connect_timeout is None else socket_connect_timeout,
        )
        self.shards: list[ShardSpec] = parse_hosts(hosts, self.socket_timeout, connect_timeout)
        self.ring = HashRing([(spec.name, index) for index, spec in enumerate(self.shards)])
        self._crypter = (
            Crypter(symmetric_encryption_keys) if symmetric_encryption_keys is not None else None
        )
        self._undecryptable = Throttled(log)  # a flood of forged entries: a few lines
        self._channel_prefix = f"{prefix}:c:"
        self._expiry_ms = int(self.expiry * 1000)
        self._ttl_ms = self._expiry_ms + 1000
        # This process's own channels' popped entries and receives, per shard, for every loop.
        self._inboxes = [
            Inbox(self.expiry, self._count_expired, self._open, self._seal, self._channel_prefix)
            for _ in self.shards
        ]
        self._last: tuple[object, _LoopState | Any] = (None, None)  # the loop used last
        self._states_lock = threading.Lock()
        self._states: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _LoopState] = (
            weakref.WeakKeyDictionary()
        )

    # -- routing --------------------------------------------------------------------------------

    def shard_names(self) -> list[str]:
        return [spec.name for spec in self.shards]

    def shard_of(self, channel: str) -> int:
        """Index (in ``hosts``) of the shard holding ``channel``."""
        return self.ring.node_for(names.non_local_name(channel))

    def shard_of_group(self, group: str) -> int:
        """Index (in ``hosts``) of the shard holding ``group``'s membership."""
        return self.ring.node_for(f"group:{group}")

    def _state(self) -> _LoopState:
        loop = asyncio.get_running_loop()
        last = self._last  # read once: another thread's loop may set it in between
        if loop is last[0]:
            return last[1]
        state = self._states.get(loop)
        if state is None:
            # async_to_sync may run each call in a fresh loop: forget closed loops' connections
            # (their transports keep the loop alive, so the weak keys alone would not), and
            # push back from here what their receivers had popped and nobody received.
            # Under the lock: several threads' new loops at once (threaded WSGI) would each
            # pop the same closed loop (a KeyError in a receive) or iterate while another adds.
            state = _LoopState(
                [self._make_shard(i) for i in range(len(self.shards))], Sends(self.counters)
            )
            with self._states_lock:
                self._states[loop] = state
                gone = [
                    self._states.pop(other) for other in list(self._states) if other.is_closed()
                ]
            for old_state in gone:
                for shard, old in zip(state.shards, old_state.shards, strict=True):
                    shard.receiver.adopt(old.receiver.leftovers())
        self._last = (loop, state)
        return state

    def _make_shard(self, index: int) -> _Shard:
        pipe = Pipe(self.shards[index], self.socket_timeout)
        receiver = Receiver(
            pipe,
            f"{self.prefix}:w:{self.client_id}:{index}",
            socket_timeout=self.socket_timeout,
            block_timeout=_BLOCK_TIMEOUT,
            expiry=self.expiry,
            on_expired=self._count_expired,
            inbox=self._inboxes[index],
        )
        return _Shard(pipe, receiver)

    def _count_expired(self, count: int) -> None:
        self.counters.expired += count

    def _open(self, payload: bytes) -> Message:
        """A popped payload as the message it carries (decrypted first)."""
        if self._crypter is not None:
            payload = self._crypter.decrypt(payload, "(a group)")
        return decode(payload)

    def _seal(self, message: Message) -> bytes:
        """The inverse of :meth:`_open` (for a decoded message that goes back to Redis)."""
        payload = encode_trusted(message, self.max_message_size)
        return payload if self._crypter is None else self._crypter.encrypt(payload)

    # -- storage --------------------------------------------------------------------------------

    async def _push(self, channel: str, payload: bytes, capacity: int) -> None:
        routing = names.non_local_name(channel)
        state = self._state()
        pipe = state.shards[self.ring.node_for(routing)].pipe
        key = self._channel_prefix + routing
        if self._crypter is not None:
            payload = self._crypter.encrypt(payload)
        now_ms = int(time.time() * 1000)
        entry = b"%013d%s %s" % (
            now_ms + self._expiry_ms,
            channel[len(routing) :].encode(),
            payload,
        )
        waiting = state.sends.push(pipe, channel, key, entry, now_ms, capacity, self._ttl_ms)
        if waiting is not None:
            await waiting

    def _receiver(self, channel: str) -> Receiver:
        shards = self._state().shards
        if len(shards) == 1:  # no routing to do (the fast path of a fan-out's many receives)
            return shards[0].receiver
        return shards[self.ring.node_for(names.non_local_name(channel))].receiver

    def _ready(self, channel: str) -> bytes | Message | None:
        receiver = self._receiver(channel)  # already popped: no coroutine
        payload = (receiver.inbox if "!" in channel else receiver.boxes).take(channel)
        if payload is not None and self._crypter is not None and type(payload) is bytes:
            payload = self._crypter.decrypt(payload, channel)
        return payload

    async def _pop(self, channel: str) -> bytes | Message:
        receiver = self._receiver(channel)
        routing = names.non_local_name(channel)
        key = self._channel_prefix + routing
        own = routing.endswith("!")
        payload = await (receiver.own(channel, key) if own else receiver.pop(channel, key))
        if self._crypter is not None and type(payload) is bytes:
            payload = self._crypter.decrypt(payload, channel)
        return payload

    async def _drain(self, routing: str) -> list[tuple[int, bytes, bytes]]:
        """Wait for, then take, every entry of this client's inbox ``routing`` (a name up to
        and including ``!``): ``(expires_at_ms, local parts, payload)`` (see Receiver.drain)."""
        receiver = self._state().shards[self.ring.node_for(routing)].receiver
        entries = await receiver.drain(self._channel_prefix + routing)
        crypter = self._crypter
        if crypter is None:
            return entries
        opened = []
        for expires, local, payload in entries:
            try:
                opened.append((expires, local, crypter.decrypt(payload, routing)))
            except UndecryptableMessage as exc:  # one bad message must not stop the inbox
                self._undecryptable("drop", logging.ERROR, "dropped a message: %s", exc)
        return opened

    def _group_keys(self, group: str) -> tuple[tuple[str, str, str], Pipe, _LoopState]:
        """The group's members, their capacities and its fan-out plan (see scripts.py)."""
        state = self._state()
        pipe = state.shards[self.shard_of_group(group)].pipe
        prefix = self.prefix
        return (f"{prefix}:g:{group}", f"{prefix}:gc:{group}", f"{prefix}:gp:{group}"), pipe, state

    async def _group_add(self, group: str, channel: str) -> None:
        keys, pipe, _ = self._group_keys(group)
        expires_ms = int((time.time() + self.group_expiry) * 1000)
        ttl_ms = int(self.group_expiry * 1000) + 1000
        await pipe.script(
            GROUP_ADD, keys, (expires_ms, ttl_ms, channel, self.get_capacity(channel))
        )

    async def _group_discard(self, group: str, channel: str) -> None:
        keys, pipe, _ = self._group_keys(group)
        await pipe.script(GROUP_DISCARD, keys, (channel,))

    async def _group_send(self, group: str, payload: bytes, skip: str = "") -> tuple[int, int]:
        """Fan ``payload`` out; the members of a process whose channel names (before ``!``)
        end with ``skip`` get nothing (``LocalRedisChannelLayer`` reached them already)."""
        keys, pipe, state = self._group_keys(group)
        if self._crypter is not None:
            payload = self._crypter.encrypt(payload)
        now_ms = int(time.time() * 1000)
        header = b"%013d" % (now_ms + self._expiry_ms)
        common = (now_ms, self._ttl_ms, header, payload, self._channel_prefix)
        if len(state.shards) == 1:  # members' lists are on the group's server: one call
            skipping = (*common, f"{skip}!" if skip else "")
            return await state.sends.group_send(pipe, group, keys, skipping)
        flat = await pipe.script(GROUP_PLAN, keys, (now_ms, self._channel_prefix))
        by_shard: defaultdict[int, list[bytes]] = defaultdict(list)
        skip_prefix = len(self._channel_prefix)
        mine = f"{skip}!".encode() if skip else None
        for i in range(0, len(flat), 2):  # plan entries: list key, "<capacity> <members> ..."
            if mine is None or not flat[i].endswith(mine):
                by_shard[self.ring.node_for(flat[i][skip_prefix:].decode())] += flat[i : i + 2]
        shards = list(by_shard)
        replies = await asyncio.gather(
            *(state.shards[i].pipe.script(FANOUT, (), (*common[:4], *by_shard[i])) for i in shards),
            return_exceptions=True,
        )
        delivered = dropped = 0
        for index, reply in zip(shards, replies, strict=True):
            if isinstance(reply, BaseException):
                log.warning(
                    "group_send(%r) to shard %s failed: %s", group, self.shards[index].name, reply
                )
                dropped += sum(int(spec.split(b" ", 2)[1]) for spec in by_shard[index][1::2])
                continue
            delivered += reply[0]
            dropped += reply[1]
            self.counters.expired += reply[2]
        return delivered, dropped

    async def check_reachable(self, channels: Iterable[str] | None = None) -> None:
        """One PING to each shard holding ``channels`` (None: every shard), in parallel; the
        failures of all of them in one error (:class:`ShardRefused` if any refused us)."""
        state = self._state()
        if channels is None:
            indexes = list(range(len(state.shards)))
        else:
            indexes = sorted({self.shard_of(channel) for channel in channels})
        replies = await asyncio.gather(
            *(state.shards[i].pipe.call("PING") for i in indexes), return_exceptions=True
        )
        errors = [
            unavailable(self.shards[i], reply)
            for i, reply in zip(indexes, replies, strict=True)
            if isinstance(reply, Exception)
        ]
        if errors:
            refused = [e for e in errors if isinstance(e, ShardRefused)]
            raise (ShardRefused if refused else ShardUnavailable)(
                "; ".join(str(e) for e in refused or errors)
            )

    async def _scan(self, pipe: Pipe, pattern: str) -> list[bytes]:
        """Keys matching ``pattern`` on one server, by SCAN (never KEYS)."""
        found: list[bytes] = []
        cursor: Any = 0
        while True:
            cursor, batch = await pipe.call("SCAN", cursor, "MATCH", pattern, "COUNT", 1000)
            found.extend(batch)
            if int(cursor) == 0:
                return found

    async def _flush(self) -> None:
        state = self._state()
        for shard in state.shards:
            keys = await self._scan(shard.pipe, f"{self.prefix}:*")
            for start in range(0, len(keys), 500):
                await shard.pipe.call("UNLINK", *keys[start : start + 500])
            shard.receiver.clear()
        state.sends.credit.clear()

    async def _storage_counts(self) -> StorageCounts:
        queued = channels = groups = 0
        for shard in self._state().shards:
            keys = await self._scan(shard.pipe, f"{self._channel_prefix}*")
            lengths = await asyncio.gather(*(shard.pipe.call("LLEN", key) for key in keys))
            boxes, inbox = shard.receiver.boxes, shard.receiver.inbox
            queued += sum(lengths) + boxes.queued() + inbox.queued()
            held = boxes.buffered_keys() | inbox.buffered_keys()
            channels += len(set(keys) | {k.encode() for k in held})
            groups += len(await self._scan(shard.pipe, f"{self.prefix}:g:*"))
        return StorageCounts(queued=queued, channels=channels, groups=groups)

    async def close(self) -> None:
        """Return prefetched entries, stop the receive loops, close this loop's connections."""
        loop = asyncio.get_running_loop()
        with self._states_lock:
            state = self._states.pop(loop, None)
        self._last = (None, None)
        if state is None:
            return
        for shard in state.shards:
            await shard.receiver.close()
            await shard.pipe.close()
