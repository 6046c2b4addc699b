"""Fixtures for the Local + Redis backend: layers on this test's IPC prefix (or a second one, a
second simulated host) sharing the session's three Redis shards under one key prefix."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from harness.redis_server import RedisServer
from layer.ipc.segment import unlink
from layer.local import LocalRedisChannelLayer
from layer.redis import RedisChannelLayer
from tests.layer.ipc.fixture import shm_objects
from tests.layer.redis_fixtures import shard_hosts

LocalFactory = Callable[..., LocalRedisChannelLayer]


@pytest.fixture
async def local_redis_layer_factory(
    ipc_prefix: str, redis_shards: list[RedisServer]
) -> AsyncIterator[LocalFactory]:
    """``factory(host=0, **options)``: a layer of simulated host ``host`` (its own IPC prefix);
    ``ipc``/``redis`` options are merged over the test's defaults."""
    made: list[LocalRedisChannelLayer] = []
    prefixes = [ipc_prefix]
    redis_prefix = f"t{uuid.uuid4().hex[:10]}"

    def factory(host: int = 0, **options: Any) -> LocalRedisChannelLayer:
        while len(prefixes) <= host:
            prefixes.append(f"t{uuid.uuid4().hex[:12]}")
        options["ipc"] = {"prefix": prefixes[host], "size": "16MB", **options.get("ipc", {})}
        options["redis"] = {
            "hosts": shard_hosts(redis_shards),
            "prefix": redis_prefix,
            **options.get("redis", {}),
        }
        made.append(LocalRedisChannelLayer(**options))
        return made[-1]

    yield factory
    for layer in made:
        await layer.close()
    cleaner = RedisChannelLayer(hosts=shard_hosts(redis_shards), prefix=redis_prefix)
    await cleaner.flush()  # the layers may be closed already (the model test closes its own)
    await cleaner.close()
    for prefix in prefixes:
        unlink(prefix)
        assert not shm_objects(prefix)
