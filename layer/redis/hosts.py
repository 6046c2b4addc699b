"""``hosts`` parsing: everything a channels_redis user writes, turned into one pool per shard.

Accepted entries, as in channels_redis: ``("host", port)`` tuples/lists, URL strings
(``redis://``, ``rediss://``, ``unix://`` with user, password, db and TLS query options),
dicts of redis-py connection kwargs (optionally with ``"address": URL``), and Sentinel dicts
(``{"sentinels": [(host, port), ...], "master_name": ..., "sentinel_kwargs": {...}}``).
The pools are only used as connection factories: this backend drives its own connections.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from redis.asyncio import ConnectionPool
from redis.asyncio.connection import AbstractConnection
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel, SentinelConnectionPool
from redis.backoff import NoBackoff

from layer.exceptions import InvalidOption

DEFAULT_HOST = "redis://127.0.0.1:6379/0"


@dataclass(frozen=True)
class ShardSpec:
    """One shard: a stable name for the hash ring and a factory of raw redis-py connections."""

    name: str
    pool: ConnectionPool
    # Sentinel: the manager's own clients keep connections bound to the event loop that made
    # them, so each loop (async_to_sync runs each call in a new one) gets its own pool.
    per_loop: Callable[[], ConnectionPool] | None = None
    _pools: dict[asyncio.AbstractEventLoop, ConnectionPool] = field(
        default_factory=dict, compare=False, repr=False
    )

    def make_connection(self) -> AbstractConnection:
        """A new, unconnected raw connection, for use in the running event loop."""
        pool = self.pool
        if self.per_loop is not None:
            loop = asyncio.get_running_loop()
            pool = self._pools.get(loop) or self._loop_pool(loop, self.per_loop)
        made: AbstractConnection = pool.make_connection()  # type: ignore[no-untyped-call]
        return made

    def _loop_pool(
        self, loop: asyncio.AbstractEventLoop, make: Callable[[], ConnectionPool]
    ) -> ConnectionPool:
        for closed in [other for other in self._pools if other.is_closed()]:
            del self._pools[closed]
        pool = self._pools[loop] = make()
        return pool


def parse_hosts(hosts: object, socket_timeout: float, connect_timeout: float) -> list[ShardSpec]:
    """Validate ``hosts`` and build one :class:`ShardSpec` per entry (order kept)."""
    if hosts is None:
        hosts = [DEFAULT_HOST]
    if isinstance(hosts, str | bytes) or not isinstance(hosts, Sequence):
        raise InvalidOption(
            f"hosts must be a list of Redis hosts (even for one), got {type(hosts).__name__} "
            f"{hosts!r}"
        )
    if not hosts:
        raise InvalidOption("hosts must name at least one Redis server")
    defaults: dict[str, Any] = {
        "socket_timeout": socket_timeout,
        "socket_connect_timeout": connect_timeout,
        "retry": Retry(NoBackoff(), 0),
        "health_check_interval": 0,
    }
    specs = [_parse_entry(entry, index, defaults) for index, entry in enumerate(hosts)]
    for index, spec in enumerate(specs):
        try:  # builds (does not connect) one connection: unknown kwargs fail here, not later
            spec.pool.make_connection()  # type: ignore[no-untyped-call]
        except TypeError as exc:
            raise InvalidOption(f"hosts[{index}]: bad connection option: {exc}") from exc
    names = [spec.name for spec in specs]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise InvalidOption(f"hosts lists the same server more than once: {duplicates}")
    return specs


def _parse_entry(entry: object, index: int, defaults: dict[str, Any]) -> ShardSpec:
    where = f"hosts[{index}]"
    if isinstance(entry, str):
        return _from_url(entry, {}, defaults, where)
    if isinstance(entry, Sequence) and not isinstance(entry, bytes):
        if len(entry) != 2 or not isinstance(entry[0], str) or not isinstance(entry[1], int):
            raise InvalidOption(f"{where} must be a (host, port) pair, got {entry!r}")
        pool = ConnectionPool(host=entry[0], port=entry[1], **defaults)
        return ShardSpec(f"{entry[0]}:{entry[1]}/0", pool)
    if isinstance(entry, Mapping):
        kwargs = dict(entry)
        if "address" in kwargs:
            return _from_url(kwargs.pop("address"), kwargs, defaults, where)
        if "master_name" in kwargs or "sentinels" in kwargs:
            return _sentinel(kwargs, defaults, where)
        pool = ConnectionPool(**{**defaults, **kwargs})
        return ShardSpec(_describe(pool.connection_kwargs), pool)
    raise InvalidOption(
        f"{where} must be a URL string, a (host, port) pair or a dict of connection options, "
        f"got {type(entry).__name__} {entry!r}"
    )


def _from_url(
    url: object, extra: dict[str, Any], defaults: dict[str, Any], where: str
) -> ShardSpec:
    if not isinstance(url, str):
        raise InvalidOption(f"{where}: address must be a URL string, got {url!r}")
    try:
        pool = ConnectionPool.from_url(url, **{**defaults, **extra})
    except (ValueError, TypeError) as exc:
        raise InvalidOption(f"{where}: cannot use Redis URL {url!r}: {exc}") from exc
    return ShardSpec(_describe(pool.connection_kwargs), pool)


def _sentinel(kwargs: dict[str, Any], defaults: dict[str, Any], where: str) -> ShardSpec:
    master_name = kwargs.pop("master_name", None)
    sentinels = kwargs.pop("sentinels", None)
    if not isinstance(master_name, str) or not master_name:
        raise InvalidOption(f"{where}: a Sentinel entry needs master_name (a str)")
    if not isinstance(sentinels, Sequence) or isinstance(sentinels, str) or not sentinels:
        raise InvalidOption(f"{where}: sentinels must be a list of (host, port) pairs")
    sentinel_kwargs = kwargs.pop("sentinel_kwargs", None) or {}

    def make() -> ConnectionPool:
        manager = Sentinel(  # type: ignore[no-untyped-call,unused-ignore]
            [tuple(s) for s in sentinels],
            sentinel_kwargs={
                "socket_timeout": defaults["socket_timeout"],
                "socket_connect_timeout": defaults["socket_connect_timeout"],
                **sentinel_kwargs,
            },
        )
        pool: ConnectionPool = SentinelConnectionPool(  # type: ignore[no-untyped-call]
            master_name, manager, **{**defaults, **kwargs}
        )
        return pool

    return ShardSpec(f"sentinel:{master_name}/{kwargs.get('db', 0)}", make(), make)


def _describe(kwargs: Mapping[str, Any]) -> str:
    """A name that identifies the server (never the password), stable across processes."""
    db = kwargs.get("db", 0)
    if kwargs.get("path"):
        return f"unix:{kwargs['path']}/{db}"
    return f"{kwargs.get('host', 'localhost')}:{kwargs.get('port', 6379)}/{db}"
