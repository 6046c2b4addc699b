"""Sentinel failover, live: a master, its replica and a sentinel (real redis-server processes);
the master is killed, the sentinel promotes the replica, and the same layer object carries on
against the new master without being rebuilt (redis-py's Sentinel pool asks for the master's
address again on each new connection)."""

from __future__ import annotations

import asyncio
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from harness.ports import free_port
from harness.redis_server import RedisServer, start_process
from layer.redis import RedisChannelLayer

pytestmark = pytest.mark.timeout(120)
MASTER = "kitfail"


def _replica(master: RedisServer, directory: Path) -> tuple[Any, int]:
    port = free_port()
    args = ["--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
    args += ["--dir", str(directory), "--replicaof", "127.0.0.1", str(master.port)]
    return start_process(args, redis.Redis(port=port)), port


def _until(predicate: Any, what: str, timeout: float = 40.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"gave up waiting for {what}")
        time.sleep(0.1)


@pytest.fixture
def cluster() -> Iterator[dict[str, Any]]:
    """Master, replica, one sentinel (quorum 1, down after 500 ms)."""
    directory = Path(tempfile.mkdtemp(prefix="layerkit-failover-"))
    master = RedisServer().start()
    replica, replica_port = _replica(master, directory)
    sentinel_port = free_port()
    conf = directory / "sentinel.conf"
    conf.write_text(
        f"port {sentinel_port}\nbind 127.0.0.1\ndir {directory}\n"
        f"sentinel monitor {MASTER} 127.0.0.1 {master.port} 1\n"
        f"sentinel down-after-milliseconds {MASTER} 500\n"
        f"sentinel failover-timeout {MASTER} 5000\n"
    )
    sentinel_client = redis.Redis(port=sentinel_port, decode_responses=True)
    sentinel = start_process([str(conf), "--sentinel"], sentinel_client)
    try:
        replica_client = redis.Redis(port=replica_port, decode_responses=True)
        _until(
            lambda: replica_client.info("replication")["master_link_status"] == "up",
            "the replica to sync",
        )
        _until(
            lambda: len(sentinel_client.execute_command("SENTINEL", "REPLICAS", MASTER)) == 1,
            "the sentinel to find the replica",
        )
        yield {
            "master": master,
            "replica_port": replica_port,
            "sentinel": sentinel_client,
            "hosts": [{"sentinels": [("127.0.0.1", sentinel_port)], "master_name": MASTER}],
        }
    finally:
        for process in (sentinel, replica):
            process.kill()
            process.wait()
        master.stop()


async def _send_when_possible(
    layer: RedisChannelLayer, channel: str, message: dict[str, Any]
) -> int:
    """Sends until one succeeds (the failover window refuses some); returns the failures."""
    failures = 0
    deadline = time.monotonic() + 40
    while True:
        try:
            await layer.send(channel, message)
            return failures
        except Exception:
            failures += 1
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.2)


async def test_the_layer_follows_a_sentinel_failover(cluster: dict[str, Any]) -> None:
    layer = RedisChannelLayer(
        hosts=cluster["hosts"], prefix=f"f{uuid.uuid4().hex[:8]}", socket_timeout=2
    )
    try:
        await layer.send("before", {"type": "m", "n": 1})
        assert await asyncio.wait_for(layer.receive("before"), 5) == {"type": "m", "n": 1}
        mine = await layer.new_channel()
        await layer.group_add("room", mine)

        with cluster["master"].client() as master:  # the replica has every write so far
            assert master.execute_command("WAIT", 1, 5000) == 1
        cluster["master"].kill()
        sentinel = cluster["sentinel"]
        _until(
            lambda: (
                sentinel.execute_command("SENTINEL", "GET-MASTER-ADDR-BY-NAME", MASTER)[1]
                == str(cluster["replica_port"])
            ),
            "the sentinel to promote the replica",
        )
        await _send_when_possible(layer, "after", {"type": "m", "n": 2})
        assert await asyncio.wait_for(layer.receive("after"), 10) == {"type": "m", "n": 2}
        # The group membership was replicated before the master died: it survived.
        await layer.group_send("room", {"type": "m", "text": "still here"})
        assert (await asyncio.wait_for(layer.receive(mine), 10))["text"] == "still here"
        promoted = redis.Redis(port=cluster["replica_port"])
        assert promoted.info("replication")["role"] == "master"
    finally:
        await layer.close()
