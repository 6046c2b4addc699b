"""layer/redis/_compat.py: the redis-py internals the layer uses are there (checked against a
real server), and a redis-py without one fails at import with its name."""

from __future__ import annotations

import asyncio
import types
from typing import Any

import hiredis
import pytest
import redis
from packaging.specifiers import SpecifierSet
from redis._parsers import hiredis as redis_hiredis
from redis.asyncio.connection import Connection

from harness.redis_server import RedisServer
from layer.redis import _compat
from layer.redis.commands import alive, write
from layer.redis.dial import open_connection
from layer.redis.hosts import parse_hosts
from layer.redis.replies import ReplyReader
from tests.support.pins import installed_within


def test_the_installed_redis_py_has_every_hook() -> None:
    assert _compat.missing_hooks(redis_hiredis, Connection) == []


def test_the_installed_redis_py_is_within_the_tested_range() -> None:
    _, spec = installed_within("redis")
    assert SpecifierSet(spec) == SpecifierSet(_compat.TESTED_RANGE)


class _Parser:
    """A parser without the hiredis reader."""


class _Bare:
    """A connection class with none of the private attributes."""


class _NoHiredis:
    def __init__(self) -> None:
        self._reader = None
        self._writer = None
        self._parser = _Parser()


def test_a_missing_hook_fails_with_its_name() -> None:
    no_sentinel = types.SimpleNamespace()
    with pytest.raises(ImportError) as caught:
        _compat.require(no_sentinel, _Bare, "99.0")
    message = str(caught.value)
    assert "redis-py 99.0" in message
    for hook in (_compat.HOOK_SENTINEL, _compat.HOOK_WRITER, _compat.HOOK_READER):
        assert hook in message
    assert _compat.HOOK_PARSER in message
    assert _compat.TESTED in message


def test_a_parser_without_hiredis_is_named() -> None:
    missing = _compat.missing_hooks(redis_hiredis, _NoHiredis)
    assert len(missing) == 1
    assert _compat.HOOK_HIREDIS in missing[0] and "_Parser" in missing[0]


async def test_the_hooks_on_a_live_connection(redis_server: RedisServer) -> None:
    """What the hooks must be once connected: the stream pair and redis-py's hiredis reader,
    returning the sentinel the layer compares with; a PING goes out and back through them."""
    spec = parse_hosts([redis_server.url], 5.0, 5.0)[0]
    conn = await open_connection(spec, 5.0)
    try:
        assert isinstance(_compat.writer_of(conn), asyncio.StreamWriter)
        assert isinstance(_compat.stream_of(conn), asyncio.StreamReader)
        reader: Any = _compat.hiredis_of(conn)
        assert isinstance(reader, hiredis.Reader)
        assert reader.gets(False) is _compat.NOT_ENOUGH_DATA
        assert alive(conn)
        replies = ReplyReader(conn, 5.0)
        try:
            write(conn, [("PING",), ("ECHO", b"x")])
            assert [await replies.reply(), await replies.reply()] == [b"PONG", b"x"]
        finally:
            replies.close()
    finally:
        await conn.disconnect(nowait=True)
    assert _compat.writer_of(conn) is None and _compat.stream_of(conn) is None
    assert not alive(conn)


async def test_a_server_closing_an_idle_connection_is_seen(redis_server: RedisServer) -> None:
    """The stream hook is what tells a connection closed by the server while idle."""
    spec = parse_hosts([redis_server.url], 5.0, 5.0)[0]
    conn = await open_connection(spec, 5.0)
    try:
        await conn.send_command("CLIENT", "SETNAME", "closing-me")
        assert await conn.read_response() == b"OK"
        admin = redis.Redis(port=redis_server.port)
        admin.execute_command("CLIENT", "KILL", "SKIPME", "yes", "TYPE", "normal")
        admin.close()
        for _ in range(100):
            if not alive(conn):
                break
            await asyncio.sleep(0.01)
        assert not alive(conn)
    finally:
        await conn.disconnect(nowait=True)
