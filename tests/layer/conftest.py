"""Backend fixtures for the conformance suite.

Each backend contributes one fixture named ``<backend>_layer_factory`` that yields a callable
``factory(**options) -> layer``; the factory owns cleanup. Add a backend by appending its name to
``BACKENDS`` and importing its fixture here.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from layer.base import BaseChannelLayer
from layer.inmemory import InMemoryChannelLayer
from tests.layer.ipc.fixture import ipc_layer_factory, ipc_prefix, journal_steps, workers
from tests.layer.local_fixtures import local_redis_layer_factory
from tests.layer.redis_fixtures import (
    redis_acl_layer_factory,
    redis_acl_server,
    redis_layer_factory,
    redis_server,
    redis_sharded_layer_factory,
    redis_shards,
    sentinel_hosts,
)

LayerFactory = Callable[..., BaseChannelLayer]

# redis_acl: the Redis layer as the kit deploys it, as a user the shipped ACL limits
BACKENDS = ["inmemory", "ipc", "redis", "redis_acl", "redis_sharded", "local_redis"]
__all__ = [
    "ipc_layer_factory",
    "ipc_prefix",
    "journal_steps",
    "local_redis_layer_factory",
    "redis_acl_layer_factory",
    "redis_acl_server",
    "redis_layer_factory",
    "redis_server",
    "redis_sharded_layer_factory",
    "redis_shards",
    "sentinel_hosts",
    "workers",
]


@pytest.fixture
async def inmemory_layer_factory() -> AsyncIterator[LayerFactory]:
    made: list[BaseChannelLayer] = []

    def factory(**options: Any) -> BaseChannelLayer:
        made.append(InMemoryChannelLayer(**options))
        return made[-1]

    yield factory
    for layer in made:
        await layer.flush()
        await layer.close()


@pytest.fixture(params=BACKENDS)
def layer_factory(request: pytest.FixtureRequest) -> LayerFactory:
    """Every backend in turn: the conformance suite runs once per backend."""
    factory: LayerFactory = request.getfixturevalue(f"{request.param}_layer_factory")
    return factory


@pytest.fixture
def channel_layer(layer_factory: LayerFactory) -> BaseChannelLayer:
    return layer_factory()
