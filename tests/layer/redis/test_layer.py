"""Redis-specific behaviour: encryption, storage layout, and the channels_redis CONFIG keys."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path
from typing import Any

import pytest

from harness.redis_server import RedisServer
from layer.config import parse
from layer.redis import RedisChannelLayer, UndecryptableMessage

ROOT = Path(__file__).resolve().parents[3]


def make(server: RedisServer, prefix: str, **options: Any) -> RedisChannelLayer:
    return RedisChannelLayer(hosts=[server.url], prefix=prefix, **options)


async def test_encrypted_messages_need_a_matching_key(redis_server: RedisServer) -> None:
    prefix = f"e{uuid.uuid4().hex[:8]}"
    old = make(redis_server, prefix, symmetric_encryption_keys=["old-key"])
    await old.send("secret", {"type": "t", "text": "plain words"})
    await old.group_add("room", "secret")
    await old.group_send("room", {"type": "t", "text": "group words"})
    await old.stats()  # group_send returns once queued; this waits until it ran
    with redis_server.client() as client:
        stored = client.lrange(f"{prefix}:c:secret", 0, -1)
    assert len(stored) == 2 and not any(b"words" in entry for entry in stored)

    stranger = make(redis_server, prefix, symmetric_encryption_keys=["other-key"])
    with pytest.raises(UndecryptableMessage, match="'secret'"):
        await asyncio.wait_for(stranger.receive("secret"), 5)
    rotated = make(redis_server, prefix, symmetric_encryption_keys=["new-key", "old-key"])
    assert (await asyncio.wait_for(rotated.receive("secret"), 5))["text"] == "group words"
    for layer in (old, stranger, rotated):
        await layer.flush()
        await layer.close()


async def test_rotated_key_reads_old_messages(redis_server: RedisServer) -> None:
    prefix = f"r{uuid.uuid4().hex[:8]}"
    old = make(redis_server, prefix, symmetric_encryption_keys=["k1"])
    new = make(redis_server, prefix, symmetric_encryption_keys=["k2", "k1"])
    newer_only = make(redis_server, prefix, symmetric_encryption_keys=["k2"])
    await old.send("c", {"type": "from.old"})
    await new.send("c", {"type": "from.new"})
    assert (await asyncio.wait_for(new.receive("c"), 5))["type"] == "from.old"
    assert (await asyncio.wait_for(newer_only.receive("c"), 5))["type"] == "from.new"
    for layer in (old, new, newer_only):
        await layer.flush()
        await layer.close()


async def test_encrypted_fan_out_to_one_process(redis_server: RedisServer) -> None:
    """A fan-out entry for several members of one process is decrypted once for all of them;
    one sent with a key the process lacks still fails every receive, naming its channel."""
    prefix = f"f{uuid.uuid4().hex[:8]}"
    mine = make(redis_server, prefix, symmetric_encryption_keys=["mine"])
    other = make(redis_server, prefix, symmetric_encryption_keys=["other"])
    members = [await mine.new_channel() for _ in range(2)]
    for member in members:
        await mine.group_add("room", member)
    await mine.group_send("room", {"type": "t", "text": "ours"})
    await mine.stats()  # group_send returns once queued; this waits until it ran
    await other.group_send("room", {"type": "t", "text": "theirs"})
    for member in members:
        assert (await asyncio.wait_for(mine.receive(member), 5))["text"] == "ours"
    for member in members:
        with pytest.raises(UndecryptableMessage, match=f"'{member}'"):
            await asyncio.wait_for(mine.receive(member), 5)
    for layer in (mine, other):
        await layer.flush()
        await layer.close()


async def test_keys_expire_and_flush_uses_scan(redis_server: RedisServer) -> None:
    layer = make(redis_server, f"k{uuid.uuid4().hex[:8]}", expiry=5)
    await layer.send("ttl", {"type": "t"})
    await layer.group_add("g", "ttl")
    with redis_server.client() as client:
        assert 0 < client.pttl(f"{layer.prefix}:c:ttl") <= 6000
        assert 0 < client.pttl(f"{layer.prefix}:g:g") <= 86_401_000
        other = client.set("unrelated-key", b"kept")
        await layer.flush()
        assert client.keys(f"{layer.prefix}:*") == [] and other
        assert client.get("unrelated-key") == b"kept"
    await layer.close()


@pytest.mark.parametrize("servers", ["redis_server", "redis_shards"])
async def test_group_send_follows_membership_changes_after_its_plan_is_cached(
    servers: str, request: pytest.FixtureRequest
) -> None:
    """A group_send caches the group's fan-out plan; every later add, discard and lapse
    must still be seen by the next send."""
    found = request.getfixturevalue(servers)
    shards: list[RedisServer] = found if isinstance(found, list) else [found]
    layer = RedisChannelLayer(hosts=[s.url for s in shards], prefix=f"p{uuid.uuid4().hex[:8]}")
    a, b, idle = [await layer.new_channel() for _ in range(3)]
    shared = "shared.member"
    await layer.group_add("room", a)
    await layer.group_add("room", shared)
    await layer.group_send("room", {"type": "m", "n": 1})  # builds the plan
    await layer.group_add("room", b)
    await layer.group_send("room", {"type": "m", "n": 2})
    await layer.group_discard("room", a)
    await layer.group_send("room", {"type": "m", "n": 3})
    await layer.stats()  # group_send returns once queued; this waits until it ran
    with shards[layer.shard_of_group("room")].client() as client:
        client.zadd(f"{layer.prefix}:g:room", {b: 1})  # b's membership lapsed long ago
    await layer.group_send("room", {"type": "m", "n": 4})

    async def numbers(channel: str) -> list[int]:
        got: list[int] = []
        while True:
            try:
                got.append((await asyncio.wait_for(layer.receive(channel), 0.3))["n"])
            except TimeoutError:
                return got

    assert await numbers(a) == [1, 2]
    assert await numbers(b) == [2, 3]
    assert await numbers(shared) == [1, 2, 3, 4]
    assert await numbers(idle) == []
    await layer.flush()
    await layer.close()


async def test_timed_out_receive_is_a_clean_cancellation(redis_server: RedisServer) -> None:
    """channels_redis surfaces a redis TimeoutError here; ours is asyncio's own timeout."""
    layer = make(redis_server, f"t{uuid.uuid4().hex[:8]}", socket_timeout=0.2)
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(layer.receive("quiet"), 1.0)
    await layer.send("quiet", {"type": "late"})
    assert (await asyncio.wait_for(layer.receive("quiet"), 5))["type"] == "late"
    await layer.close()


async def test_a_malformed_entry_is_skipped_and_receiving_goes_on(
    redis_server: RedisServer,
) -> None:
    """Something else wrote to a channel's list: the receive loop (shared by every receive on
    the shard) skips it instead of dying and leaving later receives waiting forever."""
    prefix = f"m{uuid.uuid4().hex[:8]}"
    layer = make(redis_server, prefix)
    inbox = await layer.new_channel()
    with redis_server.client() as client:
        client.rpush(f"{prefix}:c:mixed", b"not an entry")
        client.rpush(f"{prefix}:c:{inbox[: inbox.index('!') + 1]}", b"9999999999999\xff x")
    for channel in ("mixed", inbox, "mixed", inbox):
        await layer.send(channel, {"type": "after"})
        assert (await asyncio.wait_for(layer.receive(channel), 5))["type"] == "after"
    await layer.flush()
    await layer.close()


async def test_a_flooded_channel_does_not_starve_another(redis_server: RedisServer) -> None:
    """One process receives on two channels, one of them holding a long backlog: a message on
    the other is delivered long before the backlog is through (the lists take turns)."""
    prefix = f"s{uuid.uuid4().hex[:8]}"
    sender, receiver = (make(redis_server, prefix, capacity=1000) for _ in range(2))
    backlog = 1000
    for i in range(backlog):
        await sender.send("flood", {"type": "f", "i": i})
    await sender.send("quiet", {"type": "q"})
    drained = 0

    async def drain() -> None:
        nonlocal drained
        while drained < backlog:
            await receiver.receive("flood")
            drained += 1

    flood = asyncio.ensure_future(drain())
    await asyncio.sleep(0)  # the flood is being received first
    assert (await asyncio.wait_for(receiver.receive("quiet"), 10))["type"] == "q"
    assert drained < backlog // 2
    await asyncio.wait_for(flood, 30)
    for layer in (sender, receiver):
        await layer.flush()
        await layer.close()


def test_channels_redis_config_keys_build_our_layer(redis_server: RedisServer) -> None:
    config = {
        "prefix": "app",
        "expiry": 30,
        "group_expiry": 3600,
        "capacity": 50,
        "channel_capacity": {"http.request": 200, "websocket.send*": 20},
        "symmetric_encryption_keys": ["secret"],
        "hosts": [("127.0.0.1", redis_server.port)],
    }
    spec = parse({"default": {"BACKEND": "layer.redis.RedisChannelLayer", "CONFIG": config}}, "x")
    layer = spec["default"].build()
    assert isinstance(layer, RedisChannelLayer)
    assert layer.get_capacity("http.request") == 200 and layer.get_capacity("other") == 50
    assert (layer.prefix, layer.expiry, layer.group_expiry) == ("app", 30, 3600)


@pytest.mark.parametrize(
    ("file", "env", "names"),
    [
        ("redis.yaml", {}, ["127.0.0.1:6379/0"]),
        ("redis.yaml", {"REDIS_URL": "redis://u:pw@cache:6390/2"}, ["cache:6390/2"]),
        (
            "redis-sharded.yaml",
            {"REDIS_SHARD_1": "redis://redis-1:6379/0"},
            ["127.0.0.1:6379/0", "redis-1:6379/0", "127.0.0.1:6381/0"],
        ),
    ],
)
def test_shipped_redis_configs_build(
    file: str, env: dict[str, str], names: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from layer.config import get_channel_layer

    for key, value in env.items():
        monkeypatch.setenv(key, value)
    layer = get_channel_layer("default", ROOT / "config" / file)
    assert isinstance(layer, RedisChannelLayer)
    assert [shard.name for shard in layer.shards] == names
    assert layer.get_capacity("work.http") == 1000 and layer.capacity == 100


def test_async_to_sync_calls_each_in_a_fresh_loop_lose_nothing(redis_server: RedisServer) -> None:
    """Sync code (Django views, management commands) may run every call in a new event loop."""
    from asgiref.sync import async_to_sync

    layer = make(redis_server, f"s{uuid.uuid4().hex[:8]}")
    for i in range(20):
        async_to_sync(layer.send)("sync.c", {"type": "x", "i": i})
    async_to_sync(layer.group_add)("g", "sync.c")
    async_to_sync(layer.group_send)("g", {"type": "x", "i": 20})
    got = [async_to_sync(layer.receive)("sync.c")["i"] for _ in range(21)]
    assert got == list(range(21))
    assert len(layer._states) <= 1, "closed loops' connections are dropped"
    async_to_sync(layer.flush)()


@pytest.mark.parametrize("close_pools", [True, False])
def test_entries_a_closing_loop_popped_for_other_channels_are_kept(
    redis_server: RedisServer, close_pools: bool
) -> None:
    """One process's channels share an inbox: a receive on one may pop another's entry (and
    a fan-out's several members' ones, decoded once) ahead. The loop then closes, by
    close_pools() or just ending (async_to_sync): those entries go back, and a receive on
    them in the next loop gets them. They were dropped (channels_redis's test_double_receive
    hung)."""
    from asgiref.sync import async_to_sync

    layer = make(redis_server, f"s{uuid.uuid4().hex[:8]}")
    first, second, third = (async_to_sync(layer.new_channel)() for _ in range(3))
    for channel in (first, third):
        async_to_sync(layer.group_add)("room", channel)
    async_to_sync(layer.group_send)("room", {"type": "fan", "n": [1]})  # one entry, two members
    async_to_sync(layer.send)(second, {"type": "two"})

    async def receive_then_end(channel: str) -> dict[str, Any]:
        message = await layer.receive(channel)
        if close_pools:
            await layer.close_pools()
        return message

    assert async_to_sync(receive_then_end)(second)["type"] == "two"
    assert async_to_sync(receive_then_end)(third) == {"type": "fan", "n": [1]}
    assert async_to_sync(receive_then_end)(first) == {"type": "fan", "n": [1]}
    async_to_sync(layer.flush)()


async def test_back_to_back_sends_to_a_channel_share_one_rpush_in_order(
    redis_server: RedisServer,
) -> None:
    """Sends queued in one loop turn to one channel (credit held) go out as one multi-entry
    RPUSH; a send to another channel in between starts a new one, and each channel's order
    is kept."""
    prefix = f"m{uuid.uuid4().hex[:8]}"
    sender, receiver = (make(redis_server, prefix, capacity=1000) for _ in range(2))
    for channel in ("a", "b"):  # their replies grant the credit that lets sends go unchecked
        await sender.send(channel, {"type": "x", "i": -1})
    client = redis_server.client()

    def rpush_calls() -> int:
        return int(client.info("commandstats").get("cmdstat_rpush", {}).get("calls", 0))

    before = rpush_calls()
    runs = [("a", 5), ("b", 3), ("a", 5), ("b", 1), ("a", 7)]
    sent = {"a": 0, "b": 0}
    sends = []
    for channel, count in runs:
        for _ in range(count):
            sends.append(sender.send(channel, {"type": "x", "i": sent[channel]}))
            sent[channel] += 1
    await asyncio.gather(*sends)
    assert rpush_calls() - before == len(runs)
    for channel, count in sent.items():
        got = [(await receiver.receive(channel))["i"] for _ in range(count + 1)]
        assert got == list(range(-1, count))
    client.close()
    for layer in (sender, receiver):
        await layer.flush()
        await layer.close()


async def test_close_fails_receives_waiting_in_other_tasks_and_keeps_their_messages(
    redis_server: RedisServer,
) -> None:
    """A receive waiting in another task when close() runs ends with a clear error (it hung
    for ever: nobody pops for its mailbox any more); what close() returned is received after."""
    from layer.redis import ShardUnavailable

    prefix = f"t{uuid.uuid4().hex[:10]}"
    layer, other = make(redis_server, prefix), make(redis_server, prefix)
    channel = await layer.new_channel("r")
    waiting = [asyncio.ensure_future(layer.receive(name)) for name in (channel, channel, "work")]
    await asyncio.sleep(0.05)
    await layer.close()
    done, pending = await asyncio.wait(waiting, timeout=5)
    for task in pending:
        task.cancel()
    assert not pending, f"{len(pending)} of 3 receives still wait after close()"
    for task in done:
        with pytest.raises(ShardUnavailable, match="closed while this receive waited"):
            task.result()
    await other.send(channel, {"type": "m", "n": 1})
    await other.send("work", {"type": "m", "n": 2})
    assert (await asyncio.wait_for(layer.receive(channel), 5))["n"] == 1
    assert (await asyncio.wait_for(layer.receive("work"), 5))["n"] == 2
    await layer.close()
    await other.close()
