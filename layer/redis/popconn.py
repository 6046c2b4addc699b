"""The receive loop's own connection to a shard: the commands that pop, and blocking pops that
carry the sends queued on the shard's pipe in the same write.

A blocking pop holds its connection until entries come, so it cannot share the pipe's. Sends
queued on the pipe while the loop re-arms are written just before the pop (one write, and the
server answers both at once), and their replies are handed back to the pipe's callers.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
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


class PopConnection:
    """One connection, reopened on demand; failures surface as redis-py or OS errors."""

    def __init__(self, pipe: Pipe, socket_timeout: float, block_timeout: float) -> None:
        self.pipe = pipe
        self._socket_timeout = socket_timeout
        self._block_timeout = block_timeout
        self._conn: AbstractConnection | None = None
        self._replies: ReplyReader | None = None

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

    def _live(self) -> tuple[AbstractConnection, ReplyReader]:
        if self._conn is None or self._replies is None:
            raise ShardUnavailable(f"Redis shard {self.pipe.spec.name}: not connected")
        return self._conn, self._replies

    async def run(self, commands: Sequence[Sequence[Arg]]) -> list[Any]:
        """The replies to ``commands``; an error reply raises."""
        conn, replies = self._live()
        write(conn, commands)
        got = [await replies.reply() for _ in commands]
        for reply in got:
            if isinstance(reply, ResponseError):
                raise reply
        return got

    async def blocking_pop(self, pop: tuple[Arg, ...]) -> Any:
        """The reply to ``pop`` (a BLMPOP), written after the sends queued on the pipe."""
        conn, replies = self._live()
        stolen = self.pipe.steal()
        try:
            write(conn, [*(args for args, _ in stolen), pop])
        except BaseException:
            self.pipe.give_back(stolen)  # never written: they go out on the pipe instead
            raise
        if stolen:
            await self._settle_stolen(replies, stolen)
        try:
            reply = await replies.reply()
        except asyncio.CancelledError:
            # The loop is stopping (close(), or the end of an async_to_sync call's loop): drop
            # the connection now, or the server, still holding the pop for it, hands the next
            # entries to a reader that is gone (a LocalRedisChannelLayer inbox is always popped).
            self.abort()
            raise
        if isinstance(reply, ResponseError):
            raise reply
        return reply

    async def _settle_stolen(
        self, replies: ReplyReader, stolen: list[tuple[Sequence[Any], asyncio.Future[Any]]]
    ) -> None:
        got: list[Any] = []
        try:
            for _ in stolen:
                got.append(await replies.reply())
        except BaseException as exc:
            lost = unavailable(self.pipe.spec, exc)
            self.pipe.release(stolen, lost)
            raise
        self.pipe.release(stolen, got)

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
