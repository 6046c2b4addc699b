"""The receive loop's own connection to a shard: the commands that pop, and blocking pops that
carry the sends queued on the shard's pipe in the same write.

A blocking pop holds its connection until entries come, so it cannot share the pipe's. Sends
queued on the pipe while the loop re-arms are written just before the pop (one write, and the
server answers both at once), and their replies are handed back to the pipe's callers.

Commands written here pop or push list entries, so a reply is never dropped: when the loop is
cancelled while replies are due (``close()``, or the end of an ``async_to_sync`` call's loop),
a blocking pop is woken (a push to the wake list it also waits on) and every due reply is still
read, within ``socket_timeout``; the caller takes them from :meth:`PopConnection.late`. Dropping
the connection instead loses what the server had popped for it, and running the commands again
on another connection would push entries twice.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Sequence
from typing import Any

from redis.asyncio.connection import AbstractConnection
from redis.exceptions import RedisError, ResponseError

from layer.redis._compat import writer_of
from layer.redis.commands import Arg, alive, write
from layer.redis.connection import Pipe
from layer.redis.dial import open_connection
from layer.redis.replies import ReplyReader
from layer.redis.scripts import MPOP
from layer.redis.shard_errors import ShardUnavailable, unavailable

_WAKE_TTL_MS = 60_000  # a wake list left behind (its process gone) disappears by itself


class PopConnection:
    """One connection, reopened on demand; failures surface as redis-py or OS errors."""

    def __init__(
        self, pipe: Pipe, socket_timeout: float, block_timeout: float, wake_key: str
    ) -> None:
        self.pipe = pipe
        self._socket_timeout = socket_timeout
        self._block_timeout = block_timeout
        self._wake_key = wake_key
        self._wake_commands: list[Sequence[Arg]] = [
            ("RPUSH", wake_key, b"1"),
            ("PEXPIRE", wake_key, _WAKE_TTL_MS),
        ]
        self._conn: AbstractConnection | None = None
        self._replies: ReplyReader | None = None
        self._late: list[Any] = []

    async def ensure(self) -> bool:
        """Connect if needed (a connection the server closed while idle, e.g. at a restart,
        is replaced, not used); True when the connection is new."""
        if self._conn is not None and not alive(self._conn):
            await self.close()
        if self._conn is not None:
            return False
        conn = await open_connection(self.pipe.spec, self._socket_timeout)
        write(conn, [("SCRIPT", "LOAD", MPOP.source)])
        try:
            await conn.read_response()
        except (RedisError, OSError) as exc:  # e.g. NOAUTH: no password where one is required
            await conn.disconnect(nowait=True)
            raise unavailable(self.pipe.spec, exc) from exc
        self._conn = conn
        self._replies = ReplyReader(conn, self._block_timeout + self._socket_timeout)
        return True

    @property
    def connected(self) -> bool:
        return self._conn is not None

    def _live(self) -> tuple[AbstractConnection, ReplyReader]:
        if self._conn is None or self._replies is None:
            raise ShardUnavailable(f"Redis shard {self.pipe.spec.name}: not connected")
        return self._conn, self._replies

    def wake(self) -> None:
        """End a blocking pop now (a receiver came for a list it does not wait on): a push
        to the wake list, which it also waits on, sent with the pipe's next write."""
        for command in self._wake_commands:
            self.pipe.fire(*command)

    def late(self) -> list[Any]:
        """Take the replies read after the loop was cancelled (see the module docstring)."""
        late, self._late = self._late, []
        return late

    async def run(self, commands: Sequence[Sequence[Arg]]) -> list[Any]:
        """The replies to ``commands``; an error reply raises."""
        conn, replies = self._live()
        write(conn, commands)
        got: list[Any] = []
        try:
            while len(got) < len(commands):
                got.append(await replies.reply())
        except asyncio.CancelledError:
            await self._finish(self._read(replies, got, len(commands)))
            self._late = got
            raise
        for reply in got:
            if isinstance(reply, ResponseError):
                raise reply
        return got

    def _blocking_pop(self, want: dict[str, int], last: bytes | None) -> tuple[Arg, ...]:
        """BLMPOP over the wake list and ``want``. The list popped ``last`` goes last (BLMPOP
        takes from the first list with entries: no list starves another), and a shared channel
        is never popped past its own count (one COUNT serves every list)."""
        latest = last.decode() if last else None
        keys = [self._wake_key, *(k for k in want if k != latest)]
        if latest in want:
            keys.append(latest)
        shared = [n for key, n in want.items() if not key.endswith("!")]
        count = max(shared or want.values())
        return ("BLMPOP", self._block_timeout, len(keys), *keys, "LEFT", "COUNT", count)

    async def blocking_pop(self, want: dict[str, int], last: bytes | None) -> Any:
        """The reply to a BLMPOP of ``want`` (list key -> count; ``last``: the list popped
        last), written after the sends queued on the pipe."""
        pop = self._blocking_pop(want, last)
        conn, replies = self._live()
        stolen = self.pipe.steal()
        try:
            write(conn, [*(args for args, _ in stolen), pop])
        except BaseException:
            self.pipe.give_back(stolen)  # never written: they go out on the pipe instead
            raise
        sent: list[Any] = []
        try:
            await self._read(replies, sent, len(stolen))
        except asyncio.CancelledError:
            await self._finish(self._read(replies, sent, len(stolen)))
            self._release(stolen, sent)
            self._late = [await self._woken(replies)]
            raise
        except BaseException as exc:
            self._release(stolen, exc)
            raise
        self._release(stolen, sent)
        try:
            reply = await replies.reply()
        except asyncio.CancelledError:
            self._late = [await self._woken(replies)]
            raise
        if isinstance(reply, ResponseError):
            raise reply
        return reply

    @staticmethod
    async def _read(replies: ReplyReader, got: list[Any], count: int) -> None:
        while len(got) < count:
            got.append(await replies.reply())

    async def _finish(self, read: Awaitable[None]) -> None:
        """Await ``read`` (the replies still due) after a cancellation, within
        ``socket_timeout``; a server that does not answer by then loses the connection."""
        try:
            async with asyncio.timeout(self._socket_timeout):
                await read
        except (RedisError, OSError):  # TimeoutError is an OSError
            self.abort()

    async def _woken(self, replies: ReplyReader) -> Any:
        """The reply of a blocking pop cancelled while it waits: woken and read, or None."""
        got: list[Any] = []
        if self._conn is None:  # aborted
            return None
        await self._finish(self._wake_and_read(replies, got))
        return got[0] if got and not isinstance(got[0], ResponseError) else None

    async def _wake_and_read(self, replies: ReplyReader, got: list[Any]) -> None:
        if self.pipe.healthy():
            self.wake()
        else:  # not connected: a task of a loop that is ending must not start the pipe's tasks
            conn = await open_connection(self.pipe.spec, self._socket_timeout)
            try:
                write(conn, self._wake_commands)
                for _ in self._wake_commands:
                    await conn.read_response()
            finally:
                await conn.disconnect(nowait=True)
        got.append(await replies.reply())

    def _release(
        self,
        stolen: list[tuple[Sequence[Any], asyncio.Future[Any]]],
        got: list[Any] | BaseException,
    ) -> None:
        """Hand the pipe its callers' replies; those not read fail (with ``got``, if an error)."""
        read = got if isinstance(got, list) else []
        if not stolen:
            return
        if len(read) == len(stolen):
            self.pipe.release(stolen, read)
            return
        self.pipe.release(stolen[: len(read)], read)
        lost = got if isinstance(got, BaseException) else ConnectionError("its reply was not read")
        self.pipe.release(stolen[len(read) :], unavailable(self.pipe.spec, lost))

    def abort(self) -> None:
        """Close the socket at once, without a coroutine (the server unblocks a pending pop)."""
        writer = writer_of(self._conn)
        if writer is not None:
            writer.transport.abort()
        self._conn = None
        if self._replies is not None:
            self._replies.close()
            self._replies = None

    async def close(self) -> None:
        if self._replies is not None:
            self._replies.close()
            self._replies = None
        if self._conn is not None:
            conn, self._conn = self._conn, None
            await conn.disconnect(nowait=True)
