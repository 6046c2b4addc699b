"""A Redis shard is SIGKILLed and restarted on the same port (empty) under a protocol server and
a worker: the first WebSocket opened afterwards is served, by the same processes.

Before the layer replaced connections the server had closed while idle, the first command after
a restart went to the dead connection and failed, so the first WebSocket got no echo (or 1011).
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from harness.redis_server import RedisServer, running
from layer.redis import RedisChannelLayer
from tests.integration.chat import hear_text, join, new_room, say
from tests.services.procs import ROOT, Service, wait_until

CHANNEL_LOG = re.compile(r"(?:reply channel|worker channel) ([A-Za-z0-9_.\-!]+)")
SEEN = 0.5  # seconds for the processes' event loops to see the closed connections
HEARTBEAT = 0.2


@pytest.fixture
def shards() -> Iterator[list[RedisServer]]:
    yield from running(3)


def _processes(shards: list[RedisServer], **extra: str) -> Iterator[tuple[Service, Service]]:
    env = {
        "LAYER_CONFIG": str(Path(ROOT) / "config" / "redis-sharded.yaml"),
        **{f"REDIS_SHARD_{i}": server.url for i, server in enumerate(shards)},
        **extra,
    }
    worker = Service("worker", dict(env)).start()
    proto = Service("protocol", dict(env)).start()
    yield proto, worker
    for service in (proto, worker):
        service.stop()


@pytest.fixture
def processes(shards: list[RedisServer]) -> Iterator[tuple[Service, Service]]:
    yield from _processes(shards)


async def echoed(proto: Service, text: str) -> None:
    """A new WebSocket in a new room: its own message comes back."""
    ws = await join(proto.url, new_room("restart"))
    try:
        await say(ws, "t", text)
        await hear_text(ws, text)
    finally:
        await ws.close()


async def test_first_websocket_after_a_shard_restart_is_served(
    shards: list[RedisServer], processes: tuple[Service, Service]
) -> None:
    proto, worker = processes
    ring = RedisChannelLayer(hosts=[server.url for server in shards])
    wait_until(lambda: CHANNEL_LOG.search(worker.output()), "the worker's channel in its log")
    await echoed(proto, "before")
    # Every shard but the work channel's (all new connections queue there): the processes'
    # own channels, the rooms' groups and the protocol group each live on one of them.
    for victim in (k for k in range(3) if k != ring.shard_of("work.asgi")):
        shards[victim].kill()
        shards[victim].start()
        await asyncio.sleep(SEEN)
        await echoed(proto, f"after restarting shard {victim}")  # the first try, no retry
    for service in processes:
        assert service.process is not None and service.process.poll() is None


@pytest.fixture
def fast_heartbeat(shards: list[RedisServer]) -> Iterator[tuple[Service, Service]]:
    """Processes whose readiness window (10 heartbeats) is 2 s, so a lapse shows quickly."""
    yield from _processes(shards, KIT_HEARTBEAT=str(HEARTBEAT))


async def test_protocol_server_is_ready_again_after_its_group_shard_restarts(
    shards: list[RedisServer], fast_heartbeat: tuple[Service, Service]
) -> None:
    """Workers' hellos go to the protocol group; a shard that restarts empty forgot its members,
    so unless the protocol server joins again, /readyz lapses and never comes back."""
    proto, _ = fast_heartbeat
    wait_until(proto.ready, "the protocol server ready")
    home = RedisChannelLayer(hosts=[server.url for server in shards]).shard_of_group("kit.protocol")
    shards[home].kill()
    shards[home].start()
    await asyncio.sleep(10 * HEARTBEAT + 0.5)  # every hello from before the restart has lapsed
    wait_until(proto.ready, "the protocol server ready again, without a restart")
    assert proto.process is not None and proto.process.poll() is None
