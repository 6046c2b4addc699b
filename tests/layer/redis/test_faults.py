"""A shard dies mid-traffic and comes back: only its channels fail, and nothing is recreated."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import socket
import uuid
from collections.abc import AsyncIterator, Iterator

import pytest
from redis.asyncio.connection import Connection

from harness.redis_server import RedisServer, running
from layer.exceptions import AccessRefused
from layer.redis import RedisChannelLayer, ShardRefused, ShardUnavailable
from layer.redis.dial import _look_up

GUARD = 30  # seconds: a hang guard, not a speed assertion


@pytest.fixture
def servers() -> Iterator[list[RedisServer]]:
    yield from running(3)


@pytest.fixture
async def layer(servers: list[RedisServer]) -> AsyncIterator[RedisChannelLayer]:
    made = RedisChannelLayer(
        hosts=[s.url for s in servers], prefix=f"f{uuid.uuid4().hex[:8]}", socket_timeout=1.0
    )
    yield made
    with contextlib.suppress(ConnectionError):
        await made.flush()
    await made.close()


def channel_on(layer: RedisChannelLayer, shard: int, tag: str) -> str:
    return next(f"{tag}.{i}" for i in range(1000) if layer.shard_of(f"{tag}.{i}") == shard)


async def test_dead_shard_fails_alone_and_recovers(
    layer: RedisChannelLayer, servers: list[RedisServer]
) -> None:
    dead = channel_on(layer, 1, "dead")
    alive = [channel_on(layer, 0, "alive"), channel_on(layer, 2, "alive")]
    stop = asyncio.Event()
    traffic: dict[str, int] = dict.fromkeys(alive, 0)

    async def keep_sending(channel: str) -> None:  # traffic on the healthy shards throughout
        i = 0
        while not stop.is_set():
            await layer.send(channel, {"type": "t", "i": i})
            assert (await asyncio.wait_for(layer.receive(channel), GUARD))["i"] == i
            traffic[channel] = i = i + 1
            await asyncio.sleep(0.005)

    workers = [asyncio.ensure_future(keep_sending(c)) for c in alive]
    await layer.send(dead, {"type": "before"})
    assert (await asyncio.wait_for(layer.receive(dead), GUARD))["type"] == "before"
    blocked = asyncio.ensure_future(layer.receive(dead))  # waiting when the shard dies
    await asyncio.sleep(0.2)

    servers[1].kill()
    await asyncio.sleep(0.1)  # the event loop sees the closed connections
    with pytest.raises(ShardUnavailable, match=r"127\.0\.0\.1:\d+/0") as info:
        await asyncio.wait_for(layer.send(dead, {"type": "lost"}), GUARD)
    assert isinstance(info.value, ConnectionError)
    with pytest.raises(ConnectionError):
        group = next(f"g{i}" for i in range(1000) if layer.ring.node_for(f"group:g{i}") == 1)
        await asyncio.wait_for(layer.group_add(group, dead), GUARD)
    with pytest.raises(TimeoutError):  # a receive on the dead shard waits, cancellably
        await asyncio.wait_for(layer.receive(dead), 0.5)
    assert not blocked.done()
    counts = dict(traffic)
    await asyncio.sleep(0.5)
    assert all(traffic[c] > counts[c] for c in alive), "healthy shards kept working"

    servers[1].start()  # same port, empty: the layer reconnects by itself
    for attempt in range(100):
        try:
            await asyncio.wait_for(layer.send(dead, {"type": "after"}), GUARD)
            break
        except ShardUnavailable:
            assert attempt < 99
            await asyncio.sleep(0.1)
    assert (await asyncio.wait_for(blocked, GUARD))["type"] == "after"
    await layer.send(dead, {"type": "again"})
    assert (await asyncio.wait_for(layer.receive(dead), GUARD))["type"] == "again"
    stop.set()
    await asyncio.wait_for(asyncio.gather(*workers), GUARD)


async def test_group_send_reaches_live_shards_when_one_is_down(
    layer: RedisChannelLayer, servers: list[RedisServer]
) -> None:
    members = [channel_on(layer, shard, "member") for shard in range(3)]
    group = next(f"room{i}" for i in range(1000) if layer.ring.node_for(f"group:room{i}") == 0)
    for member in members:
        await layer.group_add(group, member)
    servers[2].kill()
    await asyncio.wait_for(layer.group_send(group, {"type": "hello"}), GUARD)
    for member in members[:2]:
        assert (await asyncio.wait_for(layer.receive(member), GUARD))["type"] == "hello"
    assert layer.counters.dropped_full == 1


def test_unresolvable_shard_fails_cleanly_under_uvloop() -> None:
    """A shard whose host name does not resolve within the connect timeout fails with
    ``ShardUnavailable``, and leaves no lookup behind whose error nobody retrieves (uvloop's
    create_connection, cancelled mid-lookup, did: "Future exception was never retrieved")."""
    uvloop = pytest.importorskip("uvloop")
    unhandled: list[dict[str, object]] = []

    async def main() -> None:
        asyncio.get_running_loop().set_exception_handler(lambda _, ctx: unhandled.append(ctx))
        layer = RedisChannelLayer(
            hosts=[("shard-that-does-not-resolve.invalid", 6379)], socket_connect_timeout=0.001
        )
        for _ in range(3):
            with pytest.raises(ShardUnavailable, match="shard-that-does-not-resolve"):
                await asyncio.wait_for(layer.send("c", {"type": "t"}), GUARD)
        await asyncio.sleep(1)  # the lookups finish (and fail) meanwhile
        gc.collect()  # an unretrieved exception is reported when its future is collected
        await asyncio.sleep(0)
        await layer.close()

    uvloop.run(main())
    assert unhandled == []


async def test_check_reachable_asks_only_the_shards_of_its_channels(
    layer: RedisChannelLayer, servers: list[RedisServer]
) -> None:
    """What /readyz asks: the shards of the given channels (each once), not the others."""
    servers[1].kill()
    await layer.check_reachable([channel_on(layer, 0, "a"), channel_on(layer, 2, "b")])
    for asked in ([channel_on(layer, 1, "c"), channel_on(layer, 0, "d")], None):
        with pytest.raises(ShardUnavailable, match=f"Redis shard {layer.shards[1].name} is"):
            await layer.check_reachable(asked)


async def test_a_refusing_shard_is_named_and_never_its_password() -> None:
    guarded, open_ = RedisServer(password="s3cret").start(), RedisServer().start()
    made = RedisChannelLayer(hosts=[guarded.url.replace("s3cret", "wrong"), open_.url])
    try:
        with pytest.raises(ShardRefused) as refused:  # an open shard down too: refusal wins
            open_.kill()
            await made.check_reachable()
        assert isinstance(refused.value, AccessRefused)
        message = str(refused.value)
        assert message.startswith(f"Redis shard {made.shards[0].name} refused this client")
        assert "wrong" not in message and "s3cret" not in message
        with pytest.raises(ShardRefused):  # a command meets the same error
            await made.send(channel_on(made, 0, "x"), {"type": "t"})
    finally:
        await made.close()
        guarded.stop()
        open_.stop()


async def test_one_lookup_per_shard_name_at_a_time(monkeypatch: pytest.MonkeyPatch) -> None:
    """Reconnects to a shard whose name hangs in DNS share one lookup: each hung lookup holds
    one of the resolver's few threads, and a pool used up by them made lookups of live shards
    time out (the stopped-shard integration run)."""
    loop = asyncio.get_running_loop()
    calls: list[str] = []

    async def hanging(host: str, port: int, **_: object) -> list[object]:
        calls.append(host)
        await asyncio.sleep(0.5)
        raise socket.gaierror(-2, "Name or service not known")

    monkeypatch.setattr(loop, "getaddrinfo", hanging)
    conns = [Connection(host="gone.invalid", port=6379, socket_connect_timeout=0.05)] * 20
    for _ in range(3):  # reconnect attempts while the first lookup still hangs
        results = await asyncio.gather(*(_look_up(c) for c in conns), return_exceptions=True)
        assert all(isinstance(r, OSError) and "took over" in str(r) for r in results), results
    assert calls == ["gone.invalid"]
    await asyncio.sleep(0.6)  # it fails; the next attempt looks the name up again
    with pytest.raises(socket.gaierror):
        await _look_up(Connection(host="gone.invalid", port=6379, socket_connect_timeout=1))
    assert calls == ["gone.invalid"] * 2
