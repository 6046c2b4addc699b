"""Redis across processes at volume (the twin of ``../ipc/test_volume.py``): most messages expiring
in the list, and 1,000+ groups with 1,000+ members in one; afterwards the keys left are checked:
no message list left once drained, and each group's keys hold exactly its members."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

import pytest

from harness.redis_server import RedisServer
from layer.redis import RedisChannelLayer
from tests.layer.ipc.fixture import Worker
from tests.layer.volume import expiring, many_groups

Factory = Callable[..., RedisChannelLayer]


class Keys:
    """The keys of one prefix on the (single) server, read through the layer's connection."""

    def __init__(self, layer: RedisChannelLayer) -> None:
        self.layer = layer
        self.prefix = layer.prefix
        self.pipe = layer._state().shards[0].pipe

    async def named(self, kind: str) -> set[str]:
        """Keys ``<prefix>:<kind>:*``."""
        found = await self.layer._scan(self.pipe, f"{self.prefix}:{kind}:*")
        return {key.decode() for key in found}

    async def strings(self, *command: Any) -> list[str]:
        return sorted(item.decode() for item in await self.pipe.call(*command))


def options(redis_server: RedisServer) -> dict[str, Any]:
    return {"backend": "redis", "hosts": [redis_server.url], "capacity": 10_000}


@pytest.mark.timeout(180)
async def test_four_by_four_with_most_messages_expiring(
    redis_server: RedisServer, redis_layer_factory: Factory, workers: list[Worker]
) -> None:
    prefix = f"v{uuid.uuid4().hex[:10]}"
    layer = redis_layer_factory(prefix=prefix, capacity=10_000)
    await expiring(layer, prefix, workers, options(redis_server))
    keys = Keys(layer)
    assert await keys.named("c") == set(), "message lists left after draining"
    for kind in ("g", "gc", "gp"):  # every consumer left the group
        assert await keys.named(kind) == set(), f"group keys ({kind}) left"
    assert (await layer.stats())["queued"] == 0


@pytest.mark.timeout(180)
async def test_a_thousand_groups_and_a_thousand_members(
    redis_server: RedisServer, redis_layer_factory: Factory, workers: list[Worker]
) -> None:
    prefix = f"v{uuid.uuid4().hex[:10]}"
    layer = redis_layer_factory(prefix=prefix, capacity=10_000)
    run = await many_groups(layer, prefix, workers, options(redis_server))
    keys = Keys(layer)
    assert await keys.named("c") == set(), "message lists left after draining"
    expected = {f"{prefix}:g:{group}" for group in run.groups}
    assert await keys.named("g") == expected
    assert await keys.named("gc") == {key.replace(":g:", ":gc:", 1) for key in expected}
    plans = await keys.named("gp")
    for group, members in run.groups.items():
        zset = await keys.strings("ZRANGE", f"{prefix}:g:{group}", 0, -1)
        assert zset == members, f"{group}: members {zset}, expected {members}"
        capacities = await keys.strings("HKEYS", f"{prefix}:gc:{group}")
        assert capacities == members, f"{group}: capacities of {capacities}"
        if f"{prefix}:gp:{group}" in plans:  # a cached fan-out plan names the members' lists
            lists = await keys.strings("HKEYS", f"{prefix}:gp:{group}")
            assert lists == sorted(f"{prefix}:c:{m}" for m in members), group
    assert len(run.groups) > 1000 and len(run.groups["vb.big"]) >= 1000
