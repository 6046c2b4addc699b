"""An auto-batching, pipelined command connection to one shard, over a redis-py connection.

Every command issued during one event-loop tick is packed into one write, and one reader task
resolves replies in order, so concurrent senders share round trips instead of each taking a
pooled connection. redis-py does the connecting (layer/redis/dial.py: TLS, unix sockets,
AUTH/ACL, SELECT, Sentinel discovery) and parses replies with hiredis (layer/redis/replies.py).
Failures surface as :class:`ShardUnavailable` (a builtin ``ConnectionError``) naming the shard
(layer/redis/shard_errors.py); the next command reconnects by itself.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Sequence
from typing import Any

from redis.asyncio.connection import AbstractConnection
from redis.exceptions import NoScriptError, RedisError, ResponseError

from layer.redis._compat import NOT_ENOUGH_DATA, writer_of
from layer.redis.commands import Arg, alive, write
from layer.redis.dial import open_connection
from layer.redis.hosts import ShardSpec
from layer.redis.replies import ReplyReader
from layer.redis.scripts import PUSH, Script
from layer.redis.shard_errors import ShardUnavailable, unavailable

__all__ = ["Pipe"]

_HIGH_WATER = 4 * 1024 * 1024


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
        self._writer = writer_of(self._conn)
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
        except asyncio.CancelledError:
            # close(), or the end of an async_to_sync call's loop: close the connection while
            # the loop can (a closed loop's connection only warns when it is collected).
            await conn.disconnect(nowait=True)
            raise
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
