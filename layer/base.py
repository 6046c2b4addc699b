"""The abstract channel layer: Django Channels 4's interface and every rule shared by backends.

A backend subclasses :class:`BaseChannelLayer` and supplies only storage: push a payload onto a
channel within a capacity, pop one (waiting), group membership, fan-out, flush and counts. Name
rules, message validation, serialisation, capacities, expiry settings and statistics live here
once, so every backend behaves the same and the conformance suite tests all of them alike.
"""

from __future__ import annotations

import os
import re
import uuid
from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import ClassVar

from layer import names
from layer.exceptions import ChannelFull, NotOwnChannel
from layer.flow import remember
from layer.messages import DEFAULT_MAX_MESSAGE_SIZE, Message, decode, encode, encode_trusted
from layer.options import byte_size, capacity_patterns, positive_int, positive_number

CapacitySpec = Mapping[str | re.Pattern[str], int] | Iterable[tuple[str | re.Pattern[str], int]]

_CAPACITY_CACHE_SIZE = 4096


@dataclass
class Counters:
    """What this layer instance has done since it started (exported as metrics by services)."""

    sent: int = 0
    received: int = 0
    dropped_full: int = 0
    expired: int = 0
    group_sends: int = 0


@dataclass(frozen=True)
class StorageCounts:
    """What the backend currently holds (as far as this process can see)."""

    queued: int
    channels: int
    groups: int


class BaseChannelLayer(ABC):
    """Channels-compatible async channel layer; subclasses implement the ``_``-prefixed storage."""

    extensions: ClassVar[list[str]] = ["groups", "flush"]
    MAX_NAME_LENGTH: ClassVar[int] = names.MAX_NAME_LENGTH
    # What a backend can do, declared here so that callers (services) ask instead of testing
    # types. Whether other processes share the storage: then only the client that made a
    # process-specific channel (new_channel) may receive on it, and what a receive takes may
    # have been written by anything (a peer of another version): callers check it.
    cross_process: ClassVar[bool] = True
    # Whether ``send_trusted`` hands the message object itself to the receive (one process: no
    # encoding, no size limit, no copy), so that a send costs about nothing and batching
    # several messages into one saves nothing.
    hands_over_objects: ClassVar[bool] = False

    def __init__(
        self,
        *,
        expiry: float = 60,
        group_expiry: float = 86400,
        capacity: int = 100,
        channel_capacity: CapacitySpec | None = None,
        max_message_size: int | str = DEFAULT_MAX_MESSAGE_SIZE,
    ) -> None:
        self.expiry = positive_number("expiry", expiry)
        self.group_expiry = positive_number("group_expiry", group_expiry)
        self.capacity = positive_int("capacity", capacity)
        self.channel_capacity = capacity_patterns("channel_capacity", channel_capacity)
        self.max_message_size = byte_size("max_message_size", max_message_size)
        self.counters = Counters()
        # Unique across processes and hosts: routes a process's own channels back to it.
        self.client_id = f"{os.getpid():x}{uuid.uuid4().hex[:8]}"
        self._own = self.client_id + "!"  # how the routing part of our own channels ends
        self._capacity_cache: dict[str, int] = {}

    # -- name helpers Channels calls -------------------------------------------------------

    def valid_channel_name(self, name: object, receive: bool = False) -> bool:
        names.require_valid_channel_name(name)
        return True

    def valid_group_name(self, name: object) -> bool:
        names.require_valid_group_name(name)
        return True

    def valid_channel_names(self, channel_names: Iterable[object], receive: bool = False) -> bool:
        if isinstance(channel_names, str) or not isinstance(channel_names, Iterable):
            raise TypeError("channel_names must be a list of channel names")
        for name in channel_names:
            names.require_valid_channel_name(name)
        return True

    require_valid_channel_name = valid_channel_name
    require_valid_group_name = valid_group_name

    def non_local_name(self, name: str) -> str:
        return names.non_local_name(name)

    def shares_normal_channels(self, channel: str) -> bool:
        """Whether the process that made ``channel`` (process-specific) receives from the same
        normal channels as this instance: here, every process of the layer does. A layer whose
        normal channels are per host (layer.local) says no for another host's processes, so a
        protocol server counts only the workers that can take its work."""
        return True

    def shard_names(self) -> list[str]:
        """The servers this layer's storage is spread over (``layerkit check-config`` lists
        them); none for a backend local to its host or process."""
        return []

    def get_capacity(self, channel: str) -> int:
        """Capacity of ``channel``: the first matching ``channel_capacity`` pattern, else default.

        Patterns match the routing part of the name (up to ``!``), so every process-specific
        channel of one prefix shares a capacity, as in Channels.
        """
        cached = self._capacity_cache.get(channel)
        if cached is not None:
            return cached
        routed = names.non_local_name(channel)
        capacity = next(
            (n for regex, n in self.channel_capacity if regex.match(routed)),
            self.capacity,
        )
        remember(self._capacity_cache, channel, capacity, _CAPACITY_CACHE_SIZE)
        return capacity

    # -- the public async API ----------------------------------------------------------------

    async def send(self, channel: str, message: Message) -> None:
        """Queue ``message`` on ``channel``; raise ``ChannelFull`` rather than wait."""
        names.require_valid_channel_name(channel)
        payload = encode(message, self.max_message_size)
        try:
            capacity = self._capacity_cache.get(channel) or self.get_capacity(channel)
            if not self._store(channel, payload, capacity):
                await self._push(channel, payload, capacity)
        except ChannelFull:
            self.counters.dropped_full += 1
            raise
        self.counters.sent += 1

    async def send_trusted(self, channel: str, message: Message) -> None:
        """``send`` without validating ``message``: for code that builds each message itself.

        Not part of Channels' API. The services' wire protocol sends every request through it;
        walking a message it just assembled from known types would be pure overhead. The caller
        hands ``message`` over: an in-process backend passes the object itself to the receiver
        (no encoding, no size limit), so nothing in it may change after the call.
        """
        names.require_valid_channel_name(channel)
        try:
            capacity = self._capacity_cache.get(channel) or self.get_capacity(channel)
            if not self._store_trusted(channel, message, capacity):
                await self._push_message(channel, message, capacity)
        except ChannelFull:
            self.counters.dropped_full += 1
            raise
        self.counters.sent += 1

    async def receive(self, channel: str) -> Message:
        """Wait for the next message on ``channel`` (full name, ``!`` part included).

        Cancelling a receive never loses a message: one already taken goes back to the front.
        """
        names.require_valid_channel_name(channel)
        bang = channel.find("!")
        if bang >= 0 and self.cross_process and not channel.endswith(self._own, 0, bang + 1):
            raise NotOwnChannel(
                f"cannot receive on {channel!r}: a process-specific channel of another client "
                f"(this layer's end their part up to '!' with {self._own!r}; see new_channel)"
            )
        payload = self._ready(channel)
        if payload is None:
            payload = await self._pop(channel)
        self.counters.received += 1
        if isinstance(payload, dict):  # handed over by send_trusted in this process
            return payload
        return decode(payload)

    async def new_channel(self, prefix: str = "specific") -> str:
        """A fresh process-specific channel name, unique across processes."""
        name = f"{prefix}.{self.client_id}!{uuid.uuid4().hex[:12]}"
        names.require_valid_channel_name(name)
        return name

    async def group_add(self, group: str, channel: str) -> None:
        names.require_valid_group_name(group)
        names.require_valid_channel_name(channel)
        await self._group_add(group, channel)

    async def group_discard(self, group: str, channel: str) -> None:
        names.require_valid_group_name(group)
        names.require_valid_channel_name(channel)
        await self._group_discard(group, channel)

    async def group_send(self, group: str, message: Message) -> None:
        """Send to every live member; a full member is skipped (counted), never raised."""
        names.require_valid_group_name(group)
        payload = encode(message, self.max_message_size)
        delivered, dropped = await self._group_send(group, payload)
        self.counters.group_sends += 1
        self.counters.sent += delivered
        self.counters.dropped_full += dropped

    async def flush(self) -> None:
        """Empty every channel and group of this layer."""
        await self._flush()

    async def close(self) -> None:
        """Release connections/handles; data stays for other processes where it is shared."""
        return None

    def sizing(self) -> list[str]:
        """Lines on what this layer's storage holds (``layerkit check-config`` prints them);
        nothing for a backend without a fixed size."""
        return []

    async def close_pools(self) -> None:
        """channels_redis's name for :meth:`close` (apps and its tests call it)."""
        await self.close()

    @property
    def client_prefix(self) -> str:
        """channels_redis's name for ``client_id``."""
        return self.client_id

    async def discard(self) -> None:
        """Close, also removing shared objects this instance created if nobody else uses them:
        a run that only validates a config (``layerkit check-config``) leaves nothing behind."""
        await self.close()

    async def check_reachable(self, channels: Iterable[str] | None = None) -> None:
        """Return once the storage holding ``channels`` (None: all of it) answers; else raise a
        ``ConnectionError`` naming what does not (:class:`AccessRefused` if it refused us).

        What a readiness probe asks: constant time (Redis: one PING per shard of those
        channels), never a walk of the store as :meth:`stats` is. Local backends always answer.
        """
        return None

    async def stats(self) -> dict[str, int]:
        """Counters of this instance plus what the storage holds now."""
        counts = await self._storage_counts()
        return {
            **self.counters.__dict__,
            "queued": counts.queued,
            "channels": counts.channels,
            "groups": counts.groups,
        }

    # -- what a backend implements -----------------------------------------------------------

    @abstractmethod
    async def _push(self, channel: str, payload: bytes, capacity: int) -> None:
        """Append ``payload`` (expiring after ``self.expiry``) or raise ``ChannelFull``."""

    async def _push_message(self, channel: str, message: Message, capacity: int) -> None:
        """Store a trusted ``message`` (see ``send_trusted``), encoded. A backend that never
        leaves this process keeps the object itself instead (``_store_trusted``)."""
        await self._push(channel, encode_trusted(message, self.max_message_size), capacity)

    def _store(self, channel: str, payload: bytes, capacity: int) -> bool:
        """Store ``payload`` at once if this backend can without waiting (or raise
        ``ChannelFull``): True when stored. Saves the ``_push`` coroutine on every such send."""
        return False

    def _store_trusted(self, channel: str, message: Message, capacity: int) -> bool:
        """Store a trusted ``message`` at once if this backend can (in-process: the object itself,
        for ``_ready``/``_pop`` to return as it is): True when stored. Saves the
        ``_push_message`` coroutine on every such send."""
        return False

    def _ready(self, channel: str) -> bytes | Message | None:
        """The next payload of ``channel`` if one is at hand (taken), else None and ``_pop``
        waits for one. Saves the ``_pop`` coroutine on every receive that need not wait."""
        return None

    @abstractmethod
    async def _pop(self, channel: str) -> bytes | Message:
        """Remove and return the oldest unexpired payload, waiting for one; cancel-safe."""

    @abstractmethod
    async def _group_add(self, group: str, channel: str) -> None:
        """Add (or refresh) ``channel`` in ``group`` until ``self.group_expiry`` passes."""

    @abstractmethod
    async def _group_discard(self, group: str, channel: str) -> None: ...

    @abstractmethod
    async def _group_send(self, group: str, payload: bytes) -> tuple[int, int]:
        """Push to every unexpired member; return ``(delivered, dropped_because_full)``."""

    @abstractmethod
    async def _flush(self) -> None: ...

    @abstractmethod
    async def _storage_counts(self) -> StorageCounts: ...
