"""An auto-batching, pipelined command connection to one shard, over a redis-py connection.

Every command issued during one event-loop tick is packed into one write, and one reader task
resolves replies in order, so concurrent senders share round trips instead of each taking a
pooled connection. redis-py does the connecting (TLS, unix sockets, AUTH/ACL, SELECT, Sentinel
discovery) and parses replies with hiredis. Failures surface as :class:`ShardUnavailable` (a
builtin ``ConnectionError``) naming the shard; the next command reconnects by itself.
"""

from __future__ import annotations

import asyncio
import functools
import ipaddress
import socket
import weakref
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

from redis._parsers.hiredis import NOT_ENOUGH_DATA
from redis.asyncio.connection import AbstractConnection, Connection
from redis.asyncio.sentinel import SentinelManagedConnection
from redis.exceptions import (
    AuthenticationError,
    AuthenticationWrongNumberOfArgsError,
    NoPermissionError,
    NoScriptError,
    RedisError,
    ResponseError,
)

from layer.exceptions import AccessRefused
from layer.redis.hosts import ShardSpec
from layer.redis.replies import ReplyReader
from layer.redis.scripts import PUSH, Script

Arg = bytes | str | int | float

_pack_command: Callable[[tuple[Arg, ...]], bytes] | None
try:
    from hiredis import pack_command as _pack_command  # type: ignore[assignment]
except ImportError:  # pragma: no cover - hiredis comes with the redis extra
    _pack_command = None
_HIGH_WATER = 4 * 1024 * 1024


class ShardUnavailable(ConnectionError):
    """The Redis server of a shard cannot be reached (or stopped answering within the timeout)."""


class ShardRefused(ShardUnavailable, AccessRefused):
    """The Redis server of a shard answered but refused this client: a wrong password or user,
    no password where one is required, or an ACL user without a command the layer needs."""


_REFUSALS = (AuthenticationError, AuthenticationWrongNumberOfArgsError, NoPermissionError)


def unavailable(spec: ShardSpec, exc: BaseException, what: str = "failed") -> ShardUnavailable:
    """``exc`` (a redis-py or OS error) as callers see it: :class:`ShardRefused` when the server
    refused us (retrying cannot help until the configuration changes), else
    :class:`ShardUnavailable`; either names the shard, never its password."""
    if isinstance(exc, ShardUnavailable):
        return exc
    if isinstance(exc, _REFUSALS):
        why = "an ACL permission" if isinstance(exc, NoPermissionError) else "user or password"
        return ShardRefused(f"Redis shard {spec.name} refused this client ({why}): {exc}")
    return ShardUnavailable(f"Redis shard {spec.name} {what}: {exc}")


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


def pack(commands: Sequence[Sequence[Arg]]) -> list[bytes]:
    """RESP-encode ``commands`` (redis-py's packer cost a third of a send's CPU time; hiredis's
    C packer is 3x faster than this Python one, which stays as the fallback)."""
    if _pack_command is not None:
        return [_pack_command(tuple(args)) for args in commands]
    out: list[bytes] = []
    append = out.append
    for args in commands:
        append(b"*%d\r\n" % len(args))
        for arg in args:
            if isinstance(arg, bytes):
                data = arg
            elif isinstance(arg, str):
                data = arg.encode()
            elif isinstance(arg, int):
                data = b"%d" % arg
            else:
                data = repr(arg).encode()
            if len(data) > 4096:  # large payloads are not copied into a header string
                out += (b"$%d\r\n" % len(data), data, b"\r\n")
            else:
                append(b"$%d\r\n%s\r\n" % (len(data), data))
    return out


def write(conn: AbstractConnection, commands: Sequence[Sequence[Arg]]) -> None:
    """Write ``commands`` in one go (redis-py's ``send_packed_command`` wraps each write in
    ``wait_for``, a task per write on Python 3.11; a batch here is one synchronous call)."""
    writer = conn._writer
    if writer is None:
        raise ShardUnavailable("connection closed")
    writer.writelines(pack(commands))


def alive(conn: AbstractConnection | None) -> bool:
    """Connected, and the server has not closed or reset the connection (seen even while
    idle: the transport keeps reading, so a restarted server's close, or a reset, is noticed
    before the next write)."""
    stream: asyncio.StreamReader | None = getattr(conn, "_reader", None)
    return stream is not None and not stream.at_eof() and stream.exception() is None


class Pipe:
    """Pipelined commands to one shard; ``call`` returns a future resolved with the reply.

    Made inside, and used only by, one event loop (kept: looking it up costs a syscall)."""

    def __init__(self, spec: ShardSpec, socket_timeout: float) -> None:
        self._loop = asyncio.get_running_loop()
        self._sink: asyncio.Future[Any] = self._loop.create_future()  # done: replies ignored
        self._sink.set_result(None)
        self.spec = spec
        self._socket_timeout = socket_timeout
        self._conn: AbstractConnection | None = None
        self._connecting: asyncio.Task[None] | None = None
        self._reader: asyncio.Task[None] | None = None
        self._idle: asyncio.Future[None] | None = None
        self._out: list[tuple[Sequence[Arg], asyncio.Future[Any]]] = []
        self._pending: deque[tuple[Sequence[Arg], asyncio.Future[Any]]] = deque()
        self._scheduled = False
        self._held = False
        self._closed = False
        self._writer: asyncio.StreamWriter | None = None
        self._appending: list[Arg] = []  # the RPUSH of the last append (see append)

    def call(self, *args: Arg) -> asyncio.Future[Any]:
        """Queue one command for the next batched write."""
        future: asyncio.Future[Any] = self._loop.create_future()
        self._out.append((args, future))
        if not self._scheduled:
            self._scheduled = True
            self._loop.call_soon(self._flush)
        return future

    def fire(self, *args: Arg) -> None:
        """Queue a command whose reply (or failure) nobody needs: no future of its own."""
        self._out.append((args, self._sink))
        if not self._scheduled:
            self._scheduled = True
            self._loop.call_soon(self._flush)

    def script(
        self, script: Script, keys: Sequence[Arg], args: Sequence[Arg]
    ) -> asyncio.Future[Any]:
        return self.call("EVALSHA", script.sha, len(keys), *keys, *args)

    def push(self, key: str, now_ms: int, capacity: int, ttl_ms: int, entry: bytes) -> Any:
        """The PUSH script, without the generic path's packing of lists (the hot path)."""
        return self.call("EVALSHA", PUSH.sha, 1, key, now_ms, capacity, ttl_ms, entry)

    def append(self, key: str, ttl_ms: int, entry: bytes) -> asyncio.Future[Any]:
        """RPUSH + PEXPIRE, no capacity check (the sender holds credit): a fifth of the PUSH
        script's server time, which is on every message's path. Resolves with the length.

        Appends to one key queued back to back (a worker's replies to one protocol server, a
        protocol server's requests to the work channel, in one loop turn) become one RPUSH of
        all their entries and one PEXPIRE: two commands per burst, not two per message, for
        the server to run and for this side to pack and parse. They share the future (the
        length after the last entry); only directly adjacent appends merge, so no command for
        that key can be overtaken."""
        out = self._out
        if len(out) >= 2 and out[-2][0] is self._appending and self._appending[1] == key:
            self._appending.append(entry)
            return out[-2][1]
        future: asyncio.Future[Any] = self._loop.create_future()
        command: list[Arg] = ["RPUSH", key, entry]
        out.append((command, future))
        self._appending = command
        self.fire("PEXPIRE", key, ttl_ms)
        return future

    def queued(self) -> bool:
        """Commands are waiting for the next write."""
        return bool(self._out)

    def healthy(self) -> bool:
        """Connected, and the server has not closed the connection (noticed even when idle)."""
        return alive(self._conn)

    def congested(self) -> bool:
        """More than a high-water mark written but not yet taken by the kernel."""
        writer = self._writer
        return writer is not None and writer.transport.get_write_buffer_size() > _HIGH_WATER

    async def drain(self) -> None:
        if self._writer is not None:
            await self._writer.drain()

    def steal(self) -> list[tuple[Sequence[Arg], asyncio.Future[Any]]]:
        """Hand queued commands to the receive loop, to go out in the same write as its next
        blocking pop: one write instead of two on every hop. Only when nothing is in flight
        here, and later commands wait for their replies, so the server sees them in order."""
        if not self._out or self._pending or self._held or not self.healthy():
            return []
        batch, self._out = self._out, []
        self._held = True
        return batch

    def give_back(self, batch: list[tuple[Sequence[Arg], asyncio.Future[Any]]]) -> None:
        """A stolen batch that could not be written: first in line again."""
        if batch:
            self._out = batch + self._out
            self.release([], [])

    def release(
        self, batch: Sequence[tuple[Sequence[Arg], asyncio.Future[Any]]], replies: Any
    ) -> None:
        """The replies to a stolen batch (or the exception that lost them)."""
        self._held = False
        if isinstance(replies, Exception):
            self._fail(batch, replies)
        else:
            for (args, future), reply in zip(batch, replies, strict=True):
                self._settle(args, future, reply)
        if self._out and not self._scheduled:
            self._scheduled = True
            self._loop.call_soon(self._flush)

    def _flush(self) -> None:
        self._scheduled = False
        if not self._out or self._held:
            return
        conn = self._conn
        if conn is not None and not alive(conn):
            if self._pending:  # the reader fails those, then comes back here to reconnect
                return
            self._retire()  # closed by the server while idle (a restart): never write to it
            conn = None
        if conn is None or not conn.is_connected:
            if self._connecting is None:
                self._connecting = asyncio.ensure_future(self._connect())
            return
        batch, self._out = self._out, []
        write(conn, [args for args, _ in batch])
        self._pending.extend(batch)
        if self._idle is not None and not self._idle.done():
            self._idle.set_result(None)

    async def _connect(self) -> None:
        try:
            if self._closed:
                raise ShardUnavailable(f"Redis shard {self.spec.name}: the layer is closed")
            self._conn = await open_connection(self.spec, self._socket_timeout)
        except ShardUnavailable as exc:
            self._fail(self._out, exc)
            self._out = []
            return
        finally:
            self._connecting = None
        self._writer = getattr(self._conn, "_writer", None)
        # Scripts first: an EVALSHA that met NOSCRIPT would run later, as an EVAL, after
        # commands queued behind it (a group_add overtaking the group_send before it).
        loads = [(("SCRIPT", "LOAD", source), self._sink) for source in Script.sources()]
        self._out = [*loads, *self._out]
        self._pending = deque()  # the last connection's reader owns (and fails) the old one
        self._reader = asyncio.ensure_future(self._read(self._conn, self._pending))
        self._flush()

    async def _read(
        self, conn: AbstractConnection, pending: deque[tuple[Sequence[Arg], asyncio.Future[Any]]]
    ) -> None:
        loop = asyncio.get_running_loop()
        replies = ReplyReader(conn, self._socket_timeout)
        try:
            while True:
                if not pending:
                    self._idle = loop.create_future()
                    await self._idle
                    if self._conn is not conn:  # retired while idle
                        break
                    continue
                reply = await replies.reply()  # before popping: a failure fails it too
                self._settle(*pending.popleft(), reply)
                while pending:  # replies that came in the same read
                    reply = replies.ready()
                    if reply is NOT_ENOUGH_DATA:
                        break
                    self._settle(*pending.popleft(), reply)
        except (RedisError, OSError) as exc:
            error = unavailable(self.spec, exc)
            if self._conn is conn:
                self._retire()
            self._fail(list(pending), error)
            pending.clear()
            if self._out and not self._scheduled:  # queued after it died: on a new connection
                self._scheduled = True
                loop.call_soon(self._flush)
        finally:
            replies.close()
        await conn.disconnect(nowait=True)

    def _retire(self) -> None:
        """Forget the live connection; its reader disconnects it and ends."""
        self._conn = self._writer = None
        if self._idle is not None and not self._idle.done():
            self._idle.set_result(None)

    def _settle(self, args: Sequence[Arg], future: asyncio.Future[Any], reply: Any) -> None:
        if isinstance(reply, NoScriptError) and args[0] == "EVALSHA":
            self._eval_instead(args, future)
        elif future.done():
            return
        elif isinstance(reply, ResponseError):
            future.set_exception(reply)
        else:
            future.set_result(reply)

    def _eval_instead(self, args: Sequence[Arg], future: asyncio.Future[Any]) -> None:
        """The server lost its script cache (SCRIPT FLUSH; each connection loads every script
        first): send the source once."""
        source = Script.source_of(str(args[1]))
        retry = self.call("EVAL", source, *args[2:])
        retry.add_done_callback(lambda done: _chain(done, future))

    @staticmethod
    def _fail(batch: Sequence[tuple[Sequence[Arg], asyncio.Future[Any]]], exc: Exception) -> None:
        for _, future in batch:
            if not future.done():
                future.set_exception(exc)

    async def close(self) -> None:
        """Finish what was queued (sends already returned to their callers), then disconnect."""
        waiting = [future for _, future in [*self._pending, *self._out]]
        if waiting:
            if self._out and not self._scheduled:
                self._flush()
            await asyncio.wait(waiting, timeout=self._socket_timeout)
        self._closed = True
        for task in (self._reader, self._connecting):
            if task is not None:
                task.cancel()
        if self._conn is not None:
            await self._conn.disconnect(nowait=True)
            self._conn = self._writer = None
        error = ShardUnavailable(f"Redis shard {self.spec.name}: the layer is closed")
        self._fail(list(self._pending) + self._out, error)
        self._pending.clear()
        self._out = []


def _chain(source: asyncio.Future[Any], target: asyncio.Future[Any]) -> None:
    if target.done():
        return
    if source.cancelled():
        target.cancel()
    elif (exc := source.exception()) is not None:
        target.set_exception(exc)
    else:
        target.set_result(source.result())
