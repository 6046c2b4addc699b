"""The Local + Redis layer's own rules (docs/layer.md "Local + Redis"): routing by name, two
simulated hosts (two IPC prefixes) in one process, a Redis that is down, group sends that
reach a host's own members through its segment only, and the config. The shared contract
runs in tests/layer/conformance/ and test_model.py."""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from harness.ports import free_port
from harness.redis_server import RedisServer
from layer import ConfigError, InvalidOption
from layer.config import parse
from layer.ipc.segment import unlink
from layer.local import LocalRedisChannelLayer
from layer.local.layer import BOTH, IPC, REDIS
from layer.messages import encode
from layer.redis import ShardUnavailable
from layer.redis.entries import make_entry
from tests.layer.local_fixtures import LocalFactory
from tests.layer.redis_fixtures import shard_hosts

ROOT = Path(__file__).resolve().parents[2]


async def receive_soon(layer: LocalRedisChannelLayer, channel: str, wait: float = 2.0) -> dict:
    return await asyncio.wait_for(layer.receive(channel), wait)


async def assert_empty(layer: LocalRedisChannelLayer, channel: str, wait: float = 0.2) -> None:
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(layer.receive(channel), wait)


async def test_routes(local_redis_layer_factory: LocalFactory) -> None:
    here, neighbour = local_redis_layer_factory(), local_redis_layer_factory()
    there = local_redis_layer_factory(host=1)
    assert here.host == neighbour.host != there.host
    mine, theirs = await neighbour.new_channel("reply"), await there.new_channel("reply")
    assert here.route("work.asgi") is IPC
    assert here.route(mine) is BOTH and there.route(mine) is REDIS
    assert here.route(theirs) is REDIS and there.route(theirs) is BOTH
    assert here.route("made.elsewhere!x") is REDIS
    assert here.route(f"x!{here.host}") is REDIS  # the id ends the routing part, not the name
    # a protocol server counts only workers that take from its (this host's) work channel
    assert here.shares_normal_channels(mine) and not here.shares_normal_channels(theirs)
    assert there.shares_normal_channels(theirs) and not there.shares_normal_channels(mine)


async def test_normal_channels_are_per_host(local_redis_layer_factory: LocalFactory) -> None:
    one, two = local_redis_layer_factory(), local_redis_layer_factory(host=1)
    await one.send("work", {"type": "on.one"})
    await assert_empty(two, "work")
    assert (await receive_soon(one, "work"))["type"] == "on.one"


async def test_replies_within_and_across_hosts(local_redis_layer_factory: LocalFactory) -> None:
    """A reply channel gets, in each sender's order, what a neighbour sent over IPC and what
    another host sent over Redis; the neighbour's never touch Redis."""
    owner = local_redis_layer_factory()
    neighbour, remote = local_redis_layer_factory(), local_redis_layer_factory(host=1)
    reply = await owner.new_channel("reply")
    for i in range(50):
        await neighbour.send(reply, {"type": "n", "i": i})
        await remote.send(reply, {"type": "r", "i": i})
    got = [await receive_soon(owner, reply) for _ in range(100)]
    assert [m["i"] for m in got if m["type"] == "n"] == list(range(50))
    assert [m["i"] for m in got if m["type"] == "r"] == list(range(50))
    assert (await neighbour.redis.stats())["queued"] == 0
    assert (await owner.stats())["received"] == 100


async def test_cancelled_receives_lose_nothing_from_either_host(
    local_redis_layer_factory: LocalFactory,
) -> None:
    """Receives cancelled at random while a neighbour (IPC) and another host (Redis) send:
    each sender's messages all arrive, once, in order (the other host's moved into the IPC
    queue by the inbox's bridge, behind and among the neighbour's)."""
    owner = local_redis_layer_factory(capacity=10_000)
    senders = {"n": local_redis_layer_factory(), "r": local_redis_layer_factory(host=1)}
    reply = await owner.new_channel("reply")
    got: list[dict] = []
    for i in range(300):
        task = asyncio.ensure_future(owner.receive(reply))
        await asyncio.sleep(0)
        await senders["n" if i % 3 else "r"].send(reply, {"type": "n" if i % 3 else "r", "i": i})
        await asyncio.sleep(0.001 if i % 5 == 0 else 0)
        if i % 2:
            task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            got.append(await task)
    with contextlib.suppress(TimeoutError):
        while True:
            got.append(await asyncio.wait_for(owner.receive(reply), 0.5))
    for kind in "nr":
        numbers = [m["i"] for m in got if m["type"] == kind]
        assert numbers == [i for i in range(300) if (i % 3 != 0) == (kind == "n")]


async def test_group_send_reaches_every_host_once(local_redis_layer_factory: LocalFactory) -> None:
    hosts = [local_redis_layer_factory(host=h) for h in (0, 0, 1, 1)]
    members = [await layer.new_channel("ws") for layer in hosts]
    for layer, member in zip(hosts, members, strict=True):
        await layer.group_add("room", member)
    for sender in (hosts[0], hosts[3]):
        await sender.group_send("room", {"type": "chat", "from": sender.host})
    for layer, member in zip(hosts, members, strict=True):
        got = [await receive_soon(layer, member) for _ in range(2)]  # two senders: any order
        assert sorted(m["from"] for m in got) == sorted((hosts[0].host, hosts[3].host))
        await assert_empty(layer, member)  # a host's own members had no Redis copy


async def test_fan_out_to_1000_members_over_two_hosts(
    local_redis_layer_factory: LocalFactory,
) -> None:
    """500 members on each host: every one gets every message once, in order; Redis carries
    one entry per message for the other host's process, not one per member."""
    sender = local_redis_layer_factory()
    here, there = local_redis_layer_factory(), local_redis_layer_factory(host=1)
    members = {
        layer: [await layer.new_channel("ws") for _ in range(500)] for layer in (here, there)
    }
    for layer, channels in members.items():
        for channel in channels:
            await layer.group_add("big", channel)
    for i in range(20):
        await sender.group_send("big", {"type": "chat", "i": i})
    assert (await sender.redis.stats())["queued"] == 20

    async def drain(layer: LocalRedisChannelLayer, channel: str) -> list[int]:
        return [(await receive_soon(layer, channel, 30))["i"] for _ in range(20)]

    for layer, channels in members.items():
        got = await asyncio.gather(*(drain(layer, channel) for channel in channels))
        assert got == [list(range(20))] * 500
        await asyncio.gather(*(assert_empty(layer, channel) for channel in channels[::50]))
        assert (await layer.stats())["dropped_full"] == 0


async def test_messages_from_other_hosts_keep_their_expiry(
    local_redis_layer_factory: LocalFactory,
) -> None:
    """A message that waited in Redis and then in the IPC queue expires when it was sent to:
    moving it into IPC does not give it a fresh expiry."""
    owner, remote = local_redis_layer_factory(expiry=1), local_redis_layer_factory(1, expiry=1)
    reply, other = await owner.new_channel("reply"), await owner.new_channel("reply")
    await remote.send(reply, {"type": "late"})
    await asyncio.sleep(0.6)
    await assert_empty(owner, other, 0.1)  # starts the inbox's bridge: it moves "late" to IPC
    await asyncio.sleep(0.5)
    await assert_empty(owner, reply)
    assert (await owner.stats())["expired"] == 1
    await remote.send(reply, {"type": "fresh"})
    assert (await receive_soon(owner, reply))["type"] == "fresh"


async def test_a_full_channel_drops_what_other_hosts_send(
    local_redis_layer_factory: LocalFactory, caplog: pytest.LogCaptureFixture
) -> None:
    """The other host's send succeeded (its inbox had room); this host's IPC queue is full:
    the bridge drops the rest, counts it and says so, and keeps the first ones in order."""
    owner, remote = local_redis_layer_factory(capacity=3), local_redis_layer_factory(1)
    reply, other = await owner.new_channel("reply"), await owner.new_channel("reply")
    await assert_empty(owner, other, 0.1)  # the bridge is running
    for i in range(5):
        await remote.send(reply, {"type": "r", "i": i})
    await assert_empty(owner, other, 0.3)
    assert (await owner.stats())["dropped_full"] == 2
    assert "dropped 1 message(s) from other hosts for full channels" in caplog.text
    assert [(await receive_soon(owner, reply))["i"] for _ in range(3)] == [0, 1, 2]
    await assert_empty(owner, reply)


async def test_malformed_inbox_entries_are_dropped_and_logged(
    local_redis_layer_factory: LocalFactory, caplog: pytest.LogCaptureFixture
) -> None:
    """Entries this layer did not write (no header, names that are no channel's) in a
    process's inbox: each dropped, with a log line per kind (throttled: a flood of them costs a
    few lines); the bridge keeps moving the next ones."""
    owner, remote = local_redis_layer_factory(), local_redis_layer_factory(host=1)
    reply = await owner.new_channel("reply")
    routing = reply[: reply.index("!") + 1]
    pipe = owner.redis._state().shards[owner.redis.shard_of(reply)].pipe
    later = int(time.time() * 1000) + 60_000
    payload = encode({"type": "forged"})
    for entry in (
        b"garbage",
        make_entry(later, payload, b"\xff\xfe"),
        make_entry(later, payload, b"x" * 200),
    ):
        await pipe.call("RPUSH", owner.redis._channel_prefix + routing, entry)
    await remote.send(reply, {"type": "after"})
    assert (await receive_soon(owner, reply))["type"] == "after"
    await assert_empty(owner, reply)
    assert "malformed entry" in caplog.text
    assert caplog.text.count("malformed channel") == 1  # throttled: the second is held back


@pytest.mark.parametrize("shards", [1, 3], ids=["one shard", "three shards"])
async def test_redis_carries_no_copy_for_the_senders_host(
    local_redis_layer_factory: LocalFactory, redis_shards: list[RedisServer], shards: int
) -> None:
    """The sender's host's members get the IPC copy only: Redis holds one entry, for the other
    host's process, not a second one this host would receive and throw away."""
    hosts = [s.url for s in redis_shards[1:2]] if shards == 1 else None
    options = {"redis": {"hosts": hosts}} if hosts else {}
    here, there = local_redis_layer_factory(**options), local_redis_layer_factory(1, **options)
    members = [await here.new_channel("ws"), await here.new_channel("ws")]
    members.append(await there.new_channel("ws"))
    for layer, member in zip((here, here, there), members, strict=True):
        await layer.group_add("room", member)
    await here.group_send("room", {"type": "chat"})
    assert (await here.redis.stats())["queued"] == 1  # one entry: for the other host's process
    for layer, member in zip((here, here, there), members, strict=True):
        assert (await receive_soon(layer, member)) == {"type": "chat"}
        await assert_empty(layer, member)


async def test_a_normal_channel_member_is_reached_from_its_host_only(
    local_redis_layer_factory: LocalFactory,
) -> None:
    one, two = local_redis_layer_factory(), local_redis_layer_factory(host=1)
    await one.group_add("jobs", "work.audit")
    await two.group_send("jobs", {"type": "from.two"})
    await one.group_send("jobs", {"type": "from.one"})
    assert (await receive_soon(one, "work.audit"))["type"] == "from.one"
    await assert_empty(one, "work.audit")
    await assert_empty(two, "work.audit")


async def test_redis_down_leaves_the_host_working(ipc_prefix: str) -> None:
    """Nothing listens on the Redis port: channels of this host keep working; a group send
    delivers here and then raises the Redis layer's clear error."""
    dead = f"redis://127.0.0.1:{free_port()}/0"
    layer = LocalRedisChannelLayer(
        ipc={"prefix": ipc_prefix, "size": "16MB"},
        redis={"hosts": [dead], "socket_timeout": 1},
    )
    try:
        reply = await layer.new_channel("reply")
        await layer.send("work", {"type": "w"})
        await layer.send(reply, {"type": "r"})
        assert (await receive_soon(layer, "work"))["type"] == "w"
        assert (await receive_soon(layer, reply))["type"] == "r"
        await layer.ipc._group_add("g", reply)  # its Redis half cannot be added
        with pytest.raises(ShardUnavailable):
            await layer.group_send("g", {"type": "g"})
        assert (await receive_soon(layer, reply))["type"] == "g"
    finally:
        await layer.close()
        unlink(ipc_prefix)


@pytest.mark.parametrize(
    ("config", "error"),
    [
        ({"ipc": {"sizee": 1}}, r"CONFIG\.ipc\.sizee: unknown option for IPCChannelLayer"),
        ({"redis": {"hots": []}}, r"CONFIG\.redis\.hots: unknown option for RedisChannelLayer"),
        ({"ipc": {"expiry": 5}}, r"ipc\.expiry: set expiry at the top level"),
        ({"redis": ["a"]}, r"redis must be a mapping"),
        ({"ipc": {}, "capcity": 3}, r"CONFIG\.capcity: unknown option"),
    ],
)
def test_config_mistakes_name_the_key(config: dict, error: str) -> None:
    spec = parse(
        {"default": {"BACKEND": "layer.local.LocalRedisChannelLayer", "CONFIG": config}}, "x.yaml"
    )
    with pytest.raises((ConfigError, InvalidOption), match=error):
        spec["default"].build()


def test_check_config_shows_both_halves(redis_server: RedisServer) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "services", "check-config", "--config", "config/local-redis.yaml"],
        cwd=ROOT,
        env={
            "PATH": "/usr/bin:/bin",
            "IPC_PREFIX": f"cc{free_port()}",
            "REDIS_SHARD_1": redis_server.url,
        },
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 0, result.stderr
    assert "backend: layer.local.LocalRedisChannelLayer" in result.stdout
    assert "shards:  3" in result.stdout and f"127.0.0.1:{redis_server.port}" in result.stdout
    assert "ipc: {'prefix': 'cc" in result.stdout


def test_check_config_masks_the_redis_password() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "services", "check-config", "--config", "config/local-redis.yaml"],
        cwd=ROOT,
        env={
            "PATH": "/usr/bin:/bin",
            "IPC_PREFIX": f"cc{free_port()}",
            "REDIS_SHARD_0": "redis://u:s3cret@127.0.0.1:1/0",
        },
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 0, result.stderr
    assert "s3cret" not in result.stdout
    assert "redis://u:***@127.0.0.1:1/0" in result.stdout  # the shard is still shown


def test_async_to_sync_receives_in_fresh_loops_lose_nothing(
    ipc_prefix: str, redis_shards: list[RedisServer]
) -> None:
    """Sync code may run every call in a new event loop: each receive's loop starts a bridge
    of its own; what one moved into IPC or left popped in Redis reaches the next, once, in
    order, and the pop a closing loop left waiting on the inbox takes nothing with it."""
    from asgiref.sync import async_to_sync

    other, redis_prefix = f"t{uuid.uuid4().hex[:12]}", f"t{uuid.uuid4().hex[:10]}"
    owner, remote = (
        LocalRedisChannelLayer(
            ipc={"prefix": prefix, "size": "16MB"},
            redis={"hosts": shard_hosts(redis_shards), "prefix": redis_prefix},
        )
        for prefix in (ipc_prefix, other)
    )
    try:
        reply = async_to_sync(owner.new_channel)("reply")
        got = []
        for batch in range(4):
            for i in range(batch * 5, batch * 5 + 5):
                async_to_sync(remote.send)(reply, {"type": "r", "i": i})
            got += [async_to_sync(receive_soon)(owner, reply)["i"] for _ in range(3)]
        got += [async_to_sync(receive_soon)(owner, reply)["i"] for _ in range(8)]
        assert got == list(range(20))
        assert async_to_sync(owner.stats)()["queued"] == 0
    finally:
        async_to_sync(owner.flush)()
        for layer in (owner, remote):
            async_to_sync(layer.close)()
        for prefix in (ipc_prefix, other):
            unlink(prefix)
