"""Opening a raw redis-py connection to a shard: redis-py connects (TLS, unix sockets,
AUTH/ACL, SELECT, Sentinel discovery); host names are resolved here first, one lookup per name
at a time (see :func:`_look_up`).
"""

from __future__ import annotations

import asyncio
import functools
import ipaddress
import socket
import weakref
from typing import Any

from redis.asyncio.connection import AbstractConnection, Connection
from redis.asyncio.sentinel import SentinelManagedConnection
from redis.exceptions import RedisError

from layer.redis.hosts import ShardSpec
from layer.redis.shard_errors import unavailable


async def open_connection(spec: ShardSpec, socket_timeout: float | None) -> AbstractConnection:
    """A connected raw redis-py connection to ``spec``, or :class:`ShardUnavailable`
    (:class:`ShardRefused` for a wrong password)."""
    conn = spec.make_connection()
    conn.socket_timeout = socket_timeout
    try:
        await _look_up(conn)
        await conn.connect()  # type: ignore[no-untyped-call]
    except (RedisError, OSError) as exc:
        await conn.disconnect(nowait=True)
        raise unavailable(spec, exc, "is unavailable") from exc
    return conn


Lookup = asyncio.Future[list[Any]]
# Lookups in flight, per loop and (host, port): see _look_up.
_LOOKUPS: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[tuple[str, int], Lookup]] = (
    weakref.WeakKeyDictionary()
)


async def _look_up(conn: AbstractConnection) -> None:
    """Resolve the server's host name before redis-py connects to it.

    uvloop's ``create_connection``, cancelled by redis-py's connect timeout while the name is
    still resolving (a shard whose DNS name is gone, e.g. a stopped container), leaves the
    lookup's future behind, and its ``gaierror`` is logged as "Future exception was never
    retrieved" (uvloop PR #590). A lookup of our own fails with a clear error after the connect
    timeout; a name that resolved is answered again at once by the connect that follows.

    One lookup per name at a time: the resolver runs in a small thread pool (libuv's has 4
    threads), and a lookup that hangs (Docker's DNS forwarding a stopped container's name to an
    unreachable upstream) keeps its thread after we stop waiting. Every reconnect of every
    connection to a stopped shard starting its own lookup used up the pool, and lookups of the
    live shards then timed out behind them (the integration test's stopped-shard run failed
    requests to live shards). Concurrent and repeated attempts wait on the one in flight.
    """
    if not isinstance(conn, Connection) or isinstance(conn, SentinelManagedConnection):
        return  # a unix socket, or a master's address found at connect time
    host = conn.host
    try:
        ipaddress.ip_address(host)
        return  # nothing to resolve
    except ValueError:
        pass
    loop = asyncio.get_running_loop()
    pending = _LOOKUPS.setdefault(loop, {})
    key = (host, conn.port)
    lookup = pending.get(key)
    if lookup is None:
        lookup = pending[key] = asyncio.ensure_future(
            loop.getaddrinfo(host, conn.port, type=socket.SOCK_STREAM)
        )
        lookup.add_done_callback(functools.partial(_settled, pending, key))
    try:
        await asyncio.wait_for(asyncio.shield(lookup), conn.socket_connect_timeout)
    except TimeoutError as exc:
        raise OSError(f"looking up {host!r} took over {conn.socket_connect_timeout} s") from exc


def _settled(pending: dict[tuple[str, int], Lookup], key: tuple[str, int], lookup: Lookup) -> None:
    if pending.get(key) is lookup:
        del pending[key]
    if not lookup.cancelled():
        lookup.exception()  # retrieved: nobody may be waiting for it any more
