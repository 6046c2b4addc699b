"""Fixtures for the Redis backend: one server, and three shards (password/ACL user, TCP, unix).

Servers live for the test session; every layer a test makes gets its own key prefix and is
flushed and closed afterwards, so tests never see each other's data.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import pytest
import redis

from harness.ports import free_port
from harness.redis_server import RedisServer, start_process
from layer.base import BaseChannelLayer
from layer.redis import RedisChannelLayer

LayerFactory = Callable[..., BaseChannelLayer]


def owner_and_remote(
    server: RedisServer, **options: Any
) -> tuple[RedisChannelLayer, RedisChannelLayer]:
    """Two layers on one key prefix: this process (``owner``) and a sender standing in for
    another process (``remote``), as the several-loops tests use them."""
    prefix = f"t{uuid.uuid4().hex[:10]}"
    owner, remote = (
        RedisChannelLayer(hosts=[server.url], prefix=prefix, capacity=10_000, **options)
        for _ in range(2)
    )
    return owner, remote


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    server = RedisServer().start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def sentinel_hosts(
    redis_server: RedisServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, Any]]:
    """One sentinel monitoring the session's redis-server as master ``kitmaster``."""
    directory = tmp_path_factory.mktemp("sentinel")
    port = free_port()
    conf = directory / "sentinel.conf"  # sentinel rewrites its config file: it must be writable
    conf.write_text(
        f"port {port}\nbind 127.0.0.1\ndir {directory}\n"
        f"sentinel monitor kitmaster 127.0.0.1 {redis_server.port} 1\n"
    )
    process = start_process([str(conf), "--sentinel"], redis.Redis(port=port))
    yield {"sentinels": [("127.0.0.1", port)], "master_name": "kitmaster"}
    process.kill()
    process.wait()


@pytest.fixture(scope="session")
def redis_shards() -> Iterator[list[RedisServer]]:
    servers = [
        RedisServer(user="layerkit", password="s3cret-pass").start(),
        RedisServer().start(),
        RedisServer(unix=True).start(),
    ]
    yield servers
    for server in servers:
        server.stop()


def shard_hosts(shards: list[RedisServer]) -> list[Any]:
    """The shards as a config lists them (an ACL user's URL, a pair, a unix socket)."""
    return [shards[0].url, ("127.0.0.1", shards[1].port), shards[2].url]


async def _factory(hosts: list[Any], prefix: str = "t") -> AsyncIterator[LayerFactory]:
    """Layers on ``hosts`` under fresh prefixes starting with ``prefix``; flushed and closed
    afterwards."""
    made: list[BaseChannelLayer] = []

    def factory(**options: Any) -> BaseChannelLayer:
        options.setdefault("prefix", f"{prefix}{uuid.uuid4().hex[:10]}")
        options.setdefault("hosts", hosts)
        made.append(RedisChannelLayer(**options))
        return made[-1]

    yield factory
    for layer in made:
        await layer.flush()
        await layer.close()


@pytest.fixture
async def redis_layer_factory(redis_server: RedisServer) -> AsyncIterator[LayerFactory]:
    async for factory in _factory([redis_server.url]):
        yield factory


@pytest.fixture
async def redis_sharded_layer_factory(
    redis_shards: list[RedisServer],
) -> AsyncIterator[LayerFactory]:
    async for factory in _factory(shard_hosts(redis_shards)):
        yield factory


ACL_USER, ACL_PASSWORD = "layer", "acl-test-pass"


@pytest.fixture(scope="session")
def redis_acl_server() -> Iterator[RedisServer]:
    """A server started as the kit's image starts it: the default user off, the layer's user
    limited to docker/redis/layer.acl's commands and the keys ``asgi:*``."""
    server = RedisServer(user=ACL_USER, password=ACL_PASSWORD, kit_acl=True).start()
    yield server
    server.stop()


@pytest.fixture
async def redis_acl_layer_factory(
    redis_acl_server: RedisServer,
) -> AsyncIterator[LayerFactory]:
    """Layers under a prefix the ACL's ``~asgi:*`` covers; afterwards the server's ACL log must
    be empty: a denied command the layer fires without waiting (PEXPIRE after a push) would
    otherwise go unnoticed."""
    admin = redis_acl_server.admin()
    admin.acl_log_reset()
    async for factory in _factory([redis_acl_server.url], "asgi:t"):
        yield factory
    denied = admin.acl_log()
    admin.close()
    assert denied == [], f"the ACL refused the layer: {denied}"


async def chat_through(layer: RedisChannelLayer) -> None:
    """Send, receive, a group's fan-out and a flush through ``layer``, then close it: the round
    a transport (TLS, Sentinel, an ACL user) must carry."""
    try:
        await layer.send("work.chat", {"type": "m", "n": 1})
        assert await layer.receive("work.chat") == {"type": "m", "n": 1}
        mine = await layer.new_channel()
        await layer.group_add("room", mine)
        await layer.group_send("room", {"type": "m", "text": "hi"})
        assert await layer.receive(mine) == {"type": "m", "text": "hi"}
        await layer.send("left", {"type": "m"})
        await layer.flush()
        assert (await layer.stats())["queued"] == 0
    finally:
        await layer.close()
