"""``LocalRedisChannelLayer``: IPC inside a host (a pod), Redis between hosts.

The Channels 4 counterpart of Channels 1's ``asgi_redis.RedisLocalChannelLayer``: an
``IPCChannelLayer`` and a ``RedisChannelLayer`` behind one API. A channel's route follows from
its name alone (:meth:`LocalRedisChannelLayer.route`), so all of one sender's messages to one
channel take one path and keep their order; docs/layer.md ("Local + Redis") gives the rules and
why each keeps the spec's guarantees.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from typing import Any, ClassVar

from layer.base import BaseChannelLayer, StorageCounts
from layer.exceptions import InvalidOption
from layer.flow import remember
from layer.ipc import IPCChannelLayer
from layer.local.bridge import Bridges
from layer.messages import Message, decode
from layer.redis import RedisChannelLayer

IPC, BOTH, REDIS = "ipc", "ipc+redis", "redis"  # the routes of a channel (see route())
# The base's options: set once at the top level, they apply to both halves.
SHARED = frozenset(
    name
    for name, param in inspect.signature(BaseChannelLayer.__init__).parameters.items()
    if param.kind is param.KEYWORD_ONLY
)

Taken = bytes | Message  # what a half's storage hands over: a payload, or a decoded message
_ROUTES = 8192  # channels whose route is remembered (a send or receive looks it up)


class LocalRedisChannelLayer(BaseChannelLayer):
    """Normal channels over this host's IPC segment; groups, and process-specific channels of
    other hosts, over Redis."""

    cross_process = True
    parts: ClassVar[dict[str, type[BaseChannelLayer]]] = {
        "ipc": IPCChannelLayer,
        "redis": RedisChannelLayer,
    }

    def __init__(
        self,
        *,
        ipc: Mapping[str, Any] | None = None,
        redis: Mapping[str, Any] | None = None,
        **options: Any,
    ) -> None:
        super().__init__(**options)
        shared: dict[str, Any] = {
            "expiry": self.expiry,
            "group_expiry": self.group_expiry,
            "capacity": self.capacity,
            "channel_capacity": self.channel_capacity,
            "max_message_size": self.max_message_size,
        }
        self.redis = RedisChannelLayer(**_part("redis", redis), **shared)  # no I/O yet: first
        self.ipc = IPCChannelLayer(**_part("ipc", ipc), **shared)
        self.host = self.ipc.segment_id
        self.client_id += self.host  # new_channel() names end their routing part with it
        self._own = self.client_id + "!"  # and receive() accepts those as this client's
        self._bridges = Bridges(
            self.redis._drain, self.ipc.hand_over, self.get_capacity, self.counters
        )
        self._routes: dict[str, str] = {}  # channel -> route(channel)

    def shard_names(self) -> list[str]:
        return self.redis.shard_names()

    def route(self, channel: str) -> str:
        """``IPC`` for a normal channel (this host's queue of that name); ``BOTH`` for a
        process-specific channel this host made (sent to over IPC from here, over Redis from
        elsewhere; its receiver takes from both); ``REDIS`` for any other process-specific one."""
        bang = channel.find("!")
        if bang < 0:
            return IPC
        start = bang - len(self.host)
        return BOTH if start > 0 and channel.startswith(self.host, start) else REDIS

    def _route(self, channel: str) -> str:
        """``route(channel)``, remembered: the hot paths' lookup."""
        route = self._routes.get(channel)
        if route is None:
            route = self.route(channel)
            remember(self._routes, channel, route, _ROUTES)
        return route

    def shares_normal_channels(self, channel: str) -> bool:
        """Only a process of this host: normal channels are per-host queues."""
        return self.route(channel) is not REDIS

    # -- storage ----------------------------------------------------------------------------------

    async def _push(self, channel: str, payload: bytes, capacity: int) -> None:
        if self._route(channel) is REDIS:
            await self.redis._push(channel, payload, capacity)
        else:
            await self.ipc._push(channel, payload, capacity)

    def _ready(self, channel: str) -> Taken | None:
        if self._route(channel) is REDIS:
            taken = self.redis._ready(channel)
            return None if taken is None else _opened(taken)
        # This host's: a message held needs no bridge (a receive that waits starts it: _pop).
        return self.ipc._ready(channel)

    async def _pop(self, channel: str) -> Taken:
        route = self._route(channel)
        if route is IPC:
            return await self.ipc._pop(channel)
        if route is REDIS:
            return _opened(await self.redis._pop(channel))
        # This host's: other hosts' messages are handed to its IPC receives (bridge.py).
        self._bridges.ensure(channel[: channel.index("!") + 1])
        return await self.ipc._pop(channel)

    async def _group_add(self, group: str, channel: str) -> None:
        # Redis first: the IPC membership then lapses last, so a group send from here in
        # between never has its IPC copy skipped while the Redis copy is dropped as a duplicate.
        route = self.route(channel)
        if route is not IPC:
            await self.redis._group_add(group, channel)
        if route is not REDIS:
            await self.ipc._group_add(group, channel)

    async def _group_discard(self, group: str, channel: str) -> None:
        route = self.route(channel)
        if route is not REDIS:
            await self.ipc._group_discard(group, channel)
        if route is not IPC:
            await self.redis._group_discard(group, channel)

    async def _group_send(self, group: str, payload: bytes) -> tuple[int, int]:
        # This host's members through its segment (the path its direct sends to them take, so
        # their order holds); Redis skips them and reaches every other host's.
        delivered, dropped = await self.ipc._group_send(group, payload)
        more, full = await self.redis._group_send(group, payload, skip=self.host)
        return delivered + more, dropped + full

    async def _flush(self) -> None:
        await self.ipc._flush()
        await self.redis._flush()

    async def _storage_counts(self) -> StorageCounts:
        here, there = await self.ipc._storage_counts(), await self.redis._storage_counts()
        return StorageCounts(
            queued=here.queued + there.queued,
            channels=here.channels + there.channels,
            groups=here.groups + there.groups,
        )

    async def stats(self) -> dict[str, int]:
        """This instance's counters (each half counts what it does on its own: expiries, the
        outcome of a Redis group send booked when its reply comes) plus both storages."""
        result = await super().stats()
        for half in (self.ipc, self.redis):
            for key, value in half.counters.__dict__.items():
                result[key] += value
        return result

    async def close(self) -> None:
        await self._bridges.stop()
        await self.redis.close()
        await self.ipc.close()

    async def discard(self) -> None:
        await self._bridges.stop()
        await self.redis.close()
        await self.ipc.discard()


def _opened(taken: Taken) -> Message:
    """A message from the Redis half: decoded unless it handed over the object itself."""
    return taken if type(taken) is dict else decode(taken)  # type: ignore[arg-type]


def _part(name: str, options: Mapping[str, Any] | None) -> dict[str, Any]:
    """The CONFIG of one half; the shared options belong at the top level (one value for both)."""
    if options is None:
        return {}
    if not isinstance(options, Mapping):
        raise InvalidOption(f"{name} must be a mapping of options, got {options!r}")
    for key in options:
        if key in SHARED:
            raise InvalidOption(f"{name}.{key}: set {key} at the top level (it applies to both)")
    return dict(options)
