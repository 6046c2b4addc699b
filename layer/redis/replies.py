"""Reading replies off a redis-py connection without a timer per reply.

redis-py's ``read_response`` enters an ``asyncio.timeout`` for every reply (a task lookup, a
timer scheduled and cancelled): a fifth of the client CPU of a send-and-receive roundtrip. Here
replies are parsed by the connection's own hiredis reader straight off its stream (both reached
through layer/redis/_compat.py), and one watchdog timer per connection aborts it when a reply
is overdue, which the read then reports as a ``ConnectionError``, as redis-py's timeout would.
"""

from __future__ import annotations

import asyncio
from typing import Any

import hiredis
from redis.asyncio.connection import AbstractConnection
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from layer.redis._compat import NOT_ENOUGH_DATA, hiredis_of, stream_of, writer_of

_READ_SIZE = 65536
_PUSH: Any = getattr(hiredis, "PushNotification", None)  # hiredis >= 3.2


class ReplyReader:
    """Replies of one connection, in order; error replies are returned (not raised) as redis-py
    ``ResponseError`` instances, so a pipeline hands each to its own command."""

    def __init__(self, conn: AbstractConnection, timeout: float) -> None:
        self._hiredis: Any = hiredis_of(conn)
        self._stream = stream_of(conn)
        writer = writer_of(conn)
        if self._hiredis is None or self._stream is None or writer is None:
            raise RedisConnectionError("the connection is closed (or redis-py lacks hiredis)")
        self._transport = writer.transport
        self._timeout = timeout
        self._since: float | None = None  # when the read now waiting for data started
        self._timed_out = False
        self._loop = asyncio.get_running_loop()
        self._timer = self._loop.call_later(timeout, self._watch)

    def ready(self) -> Any:
        """The next reply if it has already arrived, else ``NOT_ENOUGH_DATA`` (no waiting)."""
        reply = self._hiredis.gets(False)
        while type(reply) is _PUSH:  # RESP3 out-of-band push (e.g. a maintenance notice)
            reply = self._hiredis.gets(False)
        return reply

    async def reply(self) -> Any:
        """The next reply; ``ConnectionError`` if the connection closes or it is overdue."""
        reply = self.ready()
        while reply is NOT_ENOUGH_DATA:
            await self._fill()
            reply = self.ready()
        if isinstance(reply, RedisConnectionError):  # e.g. LOADING: the server is not usable
            raise reply
        return reply

    async def _fill(self) -> None:
        stream = self._stream
        assert stream is not None
        self._since = self._loop.time()
        try:
            data = await stream.read(_READ_SIZE)
        finally:
            self._since = None
        if not data:
            if self._timed_out:
                raise RedisTimeoutError(f"no reply within {self._timeout:g} s")
            raise RedisConnectionError("Connection closed by server.")
        self._hiredis.feed(data)

    def _watch(self) -> None:
        since, now = self._since, self._loop.time()
        if since is not None and now - since >= self._timeout:
            self._timed_out = True
            self._transport.abort()  # the waiting read sees EOF and raises
            return
        left = self._timeout if since is None else since + self._timeout - now
        self._timer = self._loop.call_later(left, self._watch)

    def close(self) -> None:
        self._timer.cancel()
