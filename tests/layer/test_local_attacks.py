"""Attacks on the Local + Redis bridge (layer/local/bridge.py): streams from another host
received while they arrive, cancellations at the hand-over, forged inbox entries, a Redis
shard restarted under a draining bridge, close() with bridges running."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
import uuid

import pytest

from harness.redis_server import RedisServer
from layer.ipc.segment import unlink
from layer.local import LocalRedisChannelLayer
from layer.messages import decode, encode
from layer.redis import RedisChannelLayer, ShardUnavailable
from layer.redis.entries import make_entry, split_entry
from tests.layer.local_fixtures import LocalFactory
from tests.layer.receiving import received_by_short_loops
from tests.layer.redis_fixtures import shard_hosts
from tests.layer.test_local import assert_empty, receive_soon
from tests.layer.threads import Reader, received_by_threads

N = 3000


async def test_a_stream_from_another_host_is_received_in_order_while_it_arrives(
    local_redis_layer_factory: LocalFactory,
) -> None:
    """One remote sender streams to a reply channel that a consumer receives from in a loop:
    the bridge hands some messages straight to the waiting receive and pushes the rest into
    IPC; the consumer must still see the sender's order (FIFO per channel)."""
    owner = local_redis_layer_factory(capacity=N)
    remote = local_redis_layer_factory(host=1, capacity=N)
    reply = await owner.new_channel("reply")

    async def send() -> None:
        for i in range(N):
            await remote.send(reply, {"type": "r", "i": i})
            if i % 7 == 0:
                await asyncio.sleep(0)

    sender = asyncio.ensure_future(send())
    got = [(await asyncio.wait_for(owner.receive(reply), 10))["i"] for _ in range(N)]
    await sender
    out_of_order = [(a, b) for a, b in itertools.pairwise(got) if b != a + 1]
    assert out_of_order == [], f"{len(out_of_order)} inversions, first: {out_of_order[:5]}"
    assert sorted(got) == list(range(N))


async def test_a_receive_cancelled_at_the_hand_over_loses_nothing_and_gets_nothing_twice(
    local_redis_layer_factory: LocalFactory,
) -> None:
    """The bridge hands a remote message straight to a waiting receive, and that receive is
    cancelled before it runs: the message goes to the next receive, once."""
    owner, remote = local_redis_layer_factory(), local_redis_layer_factory(host=1)
    reply = await owner.new_channel("reply")
    caught = 0
    for i in range(40):
        task = asyncio.ensure_future(owner.receive(reply))
        for _ in range(20):
            await asyncio.sleep(0)
        waiting = owner.ipc._local.get(reply)
        assert waiting, "the receive waits in IPC"
        await remote.send(reply, {"type": "r", "i": i})
        for _ in range(2000):  # until the bridge took the waiting receive's future
            if not waiting or task.done():
                break
            await asyncio.sleep(0)
        if not task.done():
            task.cancel()
            caught += 1
        with contextlib.suppress(asyncio.CancelledError):
            assert (await task)["i"] == i
            continue
        assert (await asyncio.wait_for(owner.receive(reply), 2))["i"] == i
    assert caught > 0, "never cancelled a receive at the hand-over"
    with contextlib.suppress(TimeoutError):
        extra = await asyncio.wait_for(owner.receive(reply), 0.3)
        raise AssertionError(f"delivered twice: {extra}")


async def test_close_with_a_bridge_running_leaves_no_task(
    local_redis_layer_factory: LocalFactory,
) -> None:
    """close() while a bridge waits on its inbox and a receive waits on IPC: no bridge task
    left pending (no "Task was destroyed but it is pending")."""
    owner = local_redis_layer_factory()
    reply = await owner.new_channel("reply")
    receive = asyncio.ensure_future(owner.receive(reply))
    await asyncio.sleep(0.1)
    bridges = [t for t in asyncio.all_tasks() if "Bridges._run" in repr(t)]
    assert bridges, "the receive started a bridge"
    await owner.close()
    await asyncio.sleep(0)
    assert all(t.done() for t in bridges)
    receive.cancel()
    with contextlib.suppress(asyncio.CancelledError, Exception):
        await receive


async def test_the_bridge_recovers_when_its_redis_shard_restarts(
    ipc_prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    """The only shard dies while the bridge waits on the inbox, then comes back on its port:
    the receive loop retries with backoff (a few log lines, no spin), and a message sent
    after the restart reaches the receive that waited all along."""
    server = RedisServer().start()
    other = f"t{uuid.uuid4().hex[:12]}"
    owner, remote = (
        LocalRedisChannelLayer(
            ipc={"prefix": prefix, "size": "16MB"},
            redis={"hosts": [server.url], "socket_timeout": 1},
        )
        for prefix in (ipc_prefix, other)
    )
    try:
        reply = await owner.new_channel("reply")
        receive = asyncio.ensure_future(owner.receive(reply))
        await asyncio.sleep(0.2)
        server.kill()
        await asyncio.sleep(3)
        failures = caplog.text.count("receiving failed")
        assert 1 <= failures <= 10, failures
        server.start()
        for _ in range(50):
            with contextlib.suppress(ShardUnavailable, OSError):
                await remote.send(reply, {"type": "after"})
                break
            await asyncio.sleep(0.1)
        assert (await asyncio.wait_for(receive, 10))["type"] == "after"
    finally:
        for layer in (owner, remote):
            await layer.close()
        for prefix in (ipc_prefix, other):
            unlink(prefix)
        server.stop()


async def test_thousands_from_another_host_into_a_full_channel_are_counted_exactly(
    local_redis_layer_factory: LocalFactory,
) -> None:
    """5,000 messages from another host for a channel of capacity 100 that nobody receives
    from: the first 100 are kept in order, every other one is dropped and counted once, and
    nothing piles up anywhere (the inbox, the bridge's drain, IPC)."""
    owner = local_redis_layer_factory(capacity=100)
    remote = local_redis_layer_factory(host=1, capacity=100_000)
    reply, other = await owner.new_channel("reply"), await owner.new_channel("reply")
    await assert_empty(owner, other, 0.1)  # the bridge is running
    for i in range(5000):
        await remote.send(reply, {"type": "r", "i": i})
    for _ in range(100):
        if (await owner.stats())["dropped_full"] == 4900:
            break
        await asyncio.sleep(0.05)
    stats = await owner.stats()
    assert stats["dropped_full"] == 4900
    assert stats["queued"] == 100  # IPC holds the 100; Redis and the drain nothing
    assert [(await owner.receive(reply))["i"] for _ in range(100)] == list(range(100))
    await assert_empty(owner, reply)
    assert (await owner.stats())["dropped_full"] == 4900


async def test_a_flood_of_forged_inbox_entries_costs_a_few_log_lines(
    local_redis_layer_factory: LocalFactory, caplog: pytest.LogCaptureFixture
) -> None:
    """Thousands of entries this layer did not write in a process's inbox (no header; a name
    that is no channel's): all dropped, the next real message delivered, and the log says so
    in a few lines, not one per entry (a full channel's drops are throttled the same way)."""
    owner, remote = local_redis_layer_factory(), local_redis_layer_factory(host=1)
    reply = await owner.new_channel("reply")
    routing = reply[: reply.index("!") + 1]
    await assert_empty(owner, reply, 0.1)  # the bridge is running
    pipe = owner.redis._state().shards[owner.redis.shard_of(reply)].pipe
    later = int(time.time() * 1000) + 60_000
    forged = make_entry(later, encode({"type": "forged"}), b"\xff\xfe")
    for _ in range(4):
        await pipe.call("RPUSH", owner.redis._channel_prefix + routing, *[b"garbage"] * 500)
        await pipe.call("RPUSH", owner.redis._channel_prefix + routing, *[forged] * 500)
    await remote.send(reply, {"type": "after"})
    assert (await receive_soon(owner, reply))["type"] == "after"
    await assert_empty(owner, reply)
    lines = [r for r in caplog.records if r.name.startswith("layer.")]
    assert 2 <= len(lines) <= 10, f"{len(lines)} log lines for 4,000 forged entries"


@pytest.mark.timeout(60)  # it hung: a swallowed cancellation kept the pop loop going (fixed)
def test_short_lived_loops_receiving_while_another_host_sends_lose_nothing(
    ipc_prefix: str, redis_shards: list[RedisServer]
) -> None:
    """Sync code receives with a short timeout, each call in a fresh event loop
    (``async_to_sync``), while another host (a thread with its own loop) keeps sending: loops
    end while their bridge's pop is waiting, has just been answered, or holds a drain. Every
    message arrives once, in order."""
    from asgiref.sync import async_to_sync

    other, redis_prefix = f"t{uuid.uuid4().hex[:12]}", f"t{uuid.uuid4().hex[:10]}"
    owner, remote = (
        LocalRedisChannelLayer(
            capacity=10_000,
            ipc={"prefix": prefix, "size": "16MB"},
            redis={"hosts": shard_hosts(redis_shards), "prefix": redis_prefix},
        )
        for prefix in (ipc_prefix, other)
    )
    total = 400
    reply = async_to_sync(owner.new_channel)("reply")
    try:
        got = received_by_short_loops(owner, remote, reply, total)
        assert got == list(range(total)), (
            f"{total - len(set(got))} lost, {len(got) - len(set(got))} twice"
        )
    finally:
        async_to_sync(owner.flush)()
        async_to_sync(owner.close)()
        for prefix in (ipc_prefix, other):
            unlink(prefix)


async def test_a_drains_leftovers_go_back_to_redis_as_they_came(
    redis_shards: list[RedisServer],
) -> None:
    """Entries a drain popped but its caller has not taken yet go back to the front of the
    inbox when the receiver closes (the loop of an ``async_to_sync`` call ending, close()):
    each with its own local part and payload, so the next drain routes it as before."""
    prefix = f"t{uuid.uuid4().hex[:10]}"
    owner, remote = (
        RedisChannelLayer(hosts=shard_hosts(redis_shards), prefix=prefix) for _ in range(2)
    )
    try:
        reply = await owner.new_channel("reply")
        routing, local = reply[: reply.index("!") + 1], reply[reply.index("!") + 1 :]
        first = asyncio.ensure_future(owner._drain(routing))
        await remote.send(reply, {"type": "r", "i": 0})
        assert [split[1] for split in await asyncio.wait_for(first, 2)] == [local.encode()]
        receiver = owner._state().shards[owner.ring.node_for(routing)].receiver
        for i in (1, 2):
            await remote.send(reply, {"type": "r", "i": i})
        drain = receiver.inbox.drains[owner._channel_prefix + routing]
        for _ in range(100):
            if len(drain.entries) == 2:
                break
            await asyncio.sleep(0.02)
        assert len(drain.entries) == 2  # popped for the drain, not taken
        await owner.close()
        shard = redis_shards[owner.ring.node_for(routing)]
        with shard.client() as client:
            back = client.lrange(owner._channel_prefix + routing, 0, -1)
        assert [split_entry(entry)[1] for entry in back] == [local.encode()] * 2
        assert [decode(split_entry(entry)[2])["i"] for entry in back] == [1, 2]
    finally:
        await remote.flush()
        await remote.close()


@pytest.mark.timeout(300)
@pytest.mark.parametrize(
    "plan",
    [
        [Reader("short", 1)] * 4,
        [Reader("short", 2), Reader("batch", 2), Reader("long", 2), Reader("short", 1)],
    ],
    ids=["four-short", "mixed"],
)
def test_several_threads_loops_receiving_while_another_host_sends(
    ipc_prefix: str, redis_shards: list[RedisServer], plan: list[Reader]
) -> None:
    """Threads receive on this host's channels in short loops, batches and long-lived loops
    (not close(): the IPC half's is final), while another host streams to them (directly and to a
    group of them): the bridge of whichever loop drains the inbox hands over to every
    thread's receives; each channel gets each message once, in the sender's order."""
    from asgiref.sync import async_to_sync

    other, redis_prefix = f"t{uuid.uuid4().hex[:12]}", f"t{uuid.uuid4().hex[:10]}"
    owner, remote = (
        LocalRedisChannelLayer(
            capacity=10_000,
            ipc={"prefix": prefix, "size": "16MB"},
            redis={"hosts": shard_hosts(redis_shards), "prefix": redis_prefix},
        )
        for prefix in (ipc_prefix, other)
    )
    try:
        outcome = received_by_threads(owner, remote, plan, 250, grouped=25)
        assert outcome.problems() == []
    finally:
        async_to_sync(owner.flush)()
        async_to_sync(owner.discard)()
        async_to_sync(remote.discard)()
        for prefix in (ipc_prefix, other):
            unlink(prefix)
