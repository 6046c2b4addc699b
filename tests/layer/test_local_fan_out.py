"""Messages from other hosts for this host's process-specific channels (issue 23): the bridge
hands them to a waiting receive or holds them in the receiving process, never through the IPC
segment. Real sizes: 1,200 members in two OS processes on two simulated hosts; full members,
expiry, receives in another thread's event loop and receives cancelled at the hand-over."""

from __future__ import annotations

import asyncio
import contextlib
import json
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings

from harness.redis_server import RedisServer
from layer.ipc.segment import unlink
from layer.local import LocalRedisChannelLayer
from tests.layer import copies
from tests.layer.fan_out_worker import GROUP
from tests.layer.ipc.fixture import shm_objects
from tests.layer.local_fixtures import LocalFactory
from tests.layer.receiving import assert_empty, receive_soon
from tests.layer.redis_fixtures import shard_hosts

ROOT = Path(__file__).resolve().parents[2]
MEMBERS, SENDS = 600, 30  # per process


@pytest.fixture
def prefixes() -> Iterator[list[str]]:
    made = [f"t{uuid.uuid4().hex[:12]}" for _ in range(2)]
    yield made
    for prefix in made:
        unlink(prefix)
        assert not shm_objects(prefix)


@pytest.mark.timeout(300)
async def test_1200_members_in_two_processes_on_two_hosts(
    prefixes: list[str], redis_shards: list[RedisServer]
) -> None:
    """Every member gets every group send once and in order; the other host's copies never
    enter its segment (one Redis entry per send, held in the receiving process), this host's
    go through its segment, one inbox entry per send for all of the process's members."""
    redis = {"hosts": shard_hosts(redis_shards), "prefix": f"t{uuid.uuid4().hex[:10]}"}
    configs = [{"ipc": {"prefix": prefix, "size": "32MB"}, "redis": redis} for prefix in prefixes]
    workers = [_start(config) for config in configs]
    sender = LocalRedisChannelLayer(**configs[0])
    try:
        for worker in workers:
            assert json.loads(_line(worker)) == {"ready": True}
        for i in range(SENDS):
            await sender.group_send(GROUP, {"type": "chat", "i": i})
        for worker in workers:
            assert worker.stdin is not None
            worker.stdin.write("go\n")
            worker.stdin.flush()
        here, there = [json.loads(await asyncio.to_thread(_line, w)) for w in workers]
        for worker in workers:
            assert worker.wait(60) == 0
    finally:
        await sender.close()
        for worker in workers:
            if worker.poll() is None:
                worker.kill()
                worker.wait()
    # This host's: one entry per group send in the process's IPC inbox, all 600 local parts.
    assert here["where"] == {"segment": SENDS, "held": 0}
    assert there["where"] == {"segment": 0, "held": MEMBERS * SENDS}
    for result in (here, there):
        assert result["got"] == [list(range(SENDS))] * MEMBERS
        assert result["stats"]["dropped_full"] == result["stats"]["expired"] == 0
        assert result["stats"]["queued"] == 0


async def test_full_members_drop_what_other_hosts_group_send(
    local_redis_layer_factory: LocalFactory,
) -> None:
    """Each member holds ``capacity`` messages from other hosts, in order; every later one is
    dropped and counted once per member; none of it is written to the segment."""
    owner = local_redis_layer_factory(capacity=40)
    remote = local_redis_layer_factory(host=1, capacity=100_000)
    members = [await owner.new_channel("ws") for _ in range(5)]
    for member in members:
        await owner.group_add("room", member)
    await assert_empty(owner, await owner.new_channel("ws"), 0.1)  # the bridge is running
    for i in range(100):
        await remote.group_send("room", {"type": "chat", "i": i})
    for _ in range(200):
        if (await owner.stats())["dropped_full"] == 5 * 60:
            break
        await asyncio.sleep(0.05)
    stats = await owner.stats()
    assert stats["dropped_full"] == 5 * 60
    assert stats["queued"] == 5 * 40
    assert owner.ipc.debug_state().queued == 0
    for member in members:
        assert [(await receive_soon(owner, member))["i"] for _ in range(40)] == list(range(40))
        await assert_empty(owner, member)
    await remote.group_send("room", {"type": "chat", "i": 100})  # room again
    for member in members:
        assert (await receive_soon(owner, member))["i"] == 100
    assert (await owner.stats())["dropped_full"] == 5 * 60


async def test_held_group_messages_expire_when_they_were_sent_to(
    local_redis_layer_factory: LocalFactory,
) -> None:
    owner = local_redis_layer_factory(expiry=1)
    remote = local_redis_layer_factory(host=1, expiry=1)
    members = [await owner.new_channel("ws") for _ in range(20)]
    for member in members:
        await owner.group_add("room", member)
    await assert_empty(owner, await owner.new_channel("ws"), 0.1)  # the bridge is running
    for i in range(50):
        await remote.group_send("room", {"type": "chat", "i": i})
    for _ in range(100):
        if sum(owner.ipc.debug_state().held.values()) == 20 * 50:
            break
        await asyncio.sleep(0.02)
    assert sum(owner.ipc.debug_state().held.values()) == 20 * 50
    await asyncio.sleep(1.1)
    for member in members:
        await assert_empty(owner, member, 0.01)
    assert (await owner.stats())["expired"] == 20 * 50
    await remote.group_send("room", {"type": "chat", "i": 50})
    for member in members:
        assert (await receive_soon(owner, member))["i"] == 50


@pytest.mark.parametrize("patience", [None, 0.002])
async def test_receives_in_another_threads_loop_get_the_bridges_hand_overs(
    local_redis_layer_factory: LocalFactory, patience: float | None
) -> None:
    """The bridge runs in this loop; receives wait in a thread's own loop, handed over across
    threads (``patience``: each receive cancelled after 2 ms, so hand-overs meet cancelled
    receives too): 2,000 messages from another host, all of them once, in order."""
    owner, remote = local_redis_layer_factory(capacity=10_000), local_redis_layer_factory(1)
    channel = await owner.new_channel("ws")
    spare = await owner.new_channel("ws")
    bridge = asyncio.ensure_future(owner.receive(spare))  # keeps this loop's bridge running
    await asyncio.sleep(0.1)
    started = threading.Event()

    async def receive_all() -> list[int]:
        got: list[int] = []
        started.set()
        while len(got) < 2000:
            with contextlib.suppress(TimeoutError):
                got.append((await asyncio.wait_for(owner.receive(channel), patience))["i"])
        return got

    receiving = asyncio.ensure_future(asyncio.to_thread(asyncio.run, receive_all()))
    await asyncio.to_thread(started.wait)
    for i in range(2000):
        await remote.send(channel, {"type": "r", "i": i})
        if i % 100 == 0:
            await asyncio.sleep(0.01)
    got = await asyncio.wait_for(receiving, 60)
    assert got == list(range(2000))
    await assert_empty(owner, channel)
    bridge.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await bridge
    assert (await owner.stats())["dropped_full"] == 0


async def test_a_receive_cancelled_at_the_hand_over_keeps_its_message_first(
    local_redis_layer_factory: LocalFactory,
) -> None:
    """The bridge hands a message to a waiting receive that is cancelled before it runs; the
    same sender's next messages arrive meanwhile and are held: the next receives get all of
    them once, the handed one first."""
    owner, remote = local_redis_layer_factory(), local_redis_layer_factory(host=1)
    reply = await owner.new_channel("reply")
    caught = 0
    for n in range(30):
        task = asyncio.ensure_future(owner.receive(reply))
        for _ in range(20):
            await asyncio.sleep(0)
        waiting = owner.ipc._local.get(reply)
        assert waiting, "the receive waits in IPC"
        await remote.send(reply, {"type": "r", "i": 3 * n})
        for _ in range(2000):  # until the bridge took the waiting receive's future
            if not waiting or task.done():
                break
            await asyncio.sleep(0)
        want = [3 * n, 3 * n + 1, 3 * n + 2]
        if task.done():
            want.pop(0)
            assert (await task)["i"] == 3 * n
        else:
            task.cancel()
            caught += 1
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for i in want[-2:]:
            await remote.send(reply, {"type": "r", "i": i})
        for _ in range(200):
            if (await owner.stats())["queued"] == len(want):
                break
            await asyncio.sleep(0.01)
        assert [(await receive_soon(owner, reply))["i"] for _ in want] == want
    assert caught > 0, "never cancelled a receive at the hand-over"
    await assert_empty(owner, reply)


async def test_a_receive_left_in_a_closed_loop_does_not_stop_the_bridge(
    local_redis_layer_factory: LocalFactory,
) -> None:
    """A thread's event loop was closed while its receive waited (never cancelled): the bridge,
    finding that receive first in line, passes over it instead of failing, and the messages go
    to the next receives, in order."""
    owner, remote = local_redis_layer_factory(), local_redis_layer_factory(host=1)
    channel = await owner.new_channel("ws")
    bridge = asyncio.ensure_future(owner.receive(await owner.new_channel("ws")))
    await asyncio.sleep(0.1)  # this loop's bridge runs

    abandoned: list[asyncio.Task[dict]] = []

    def abandon() -> None:
        loop = asyncio.new_event_loop()
        abandoned.append(loop.create_task(owner.receive(channel)))
        loop.run_until_complete(asyncio.sleep(0.05))
        loop.close()  # the receive is left waiting

    await asyncio.to_thread(abandon)
    assert owner.ipc.debug_state().parked[channel] == 1
    for i in range(20):
        await remote.send(channel, {"type": "r", "i": i})
    assert [(await receive_soon(owner, channel))["i"] for _ in range(20)] == list(range(20))
    assert not bridge.done()
    bridge.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await bridge


def _start(config: dict) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "tests.layer.fan_out_worker", json.dumps(config), str(MEMBERS),
         str(SENDS)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )  # fmt: skip


def _line(proc: subprocess.Popen[str]) -> str:
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert line, f"worker exited with {proc.wait()} before saying anything"
    return line


@settings(
    max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(plan=copies.steps)
def test_members_get_their_own_copies_of_other_hosts_messages_against_a_model(
    prefixes: list[str], redis_shards: list[RedisServer], plan: list[copies.Step]
) -> None:
    """Group and direct sends from another host, through the bridge, to receives waiting and
    to messages held: each member gets its messages in order, once, as its own dict; a flat
    message is decoded once for all the members (tests/layer/copies.py)."""

    async def run() -> None:
        redis = {"hosts": shard_hosts(redis_shards), "prefix": f"t{uuid.uuid4().hex[:10]}"}
        sender, receiver = (
            LocalRedisChannelLayer(ipc={"prefix": prefix, "size": "16MB"}, redis=redis)
            for prefix in reversed(prefixes)
        )
        try:
            await copies.run_model(sender, receiver, plan)
            assert (await receiver.stats())["queued"] == 0
            assert receiver.ipc.debug_state().queued == 0  # the bridge's never enter the segment
        finally:
            await sender.flush()
            await sender.close()
            await receiver.close()

    asyncio.run(run())


async def test_a_thousand_members_each_get_their_own_copy_of_another_hosts_message(
    local_redis_layer_factory: LocalFactory,
) -> None:
    """1,000 members, half of them waiting for the first of 20 group sends from another host:
    every member gets its own dict of each (mutations stay its own), decoded once by the bridge
    when every value is immutable."""
    receiver, sender = local_redis_layer_factory(), local_redis_layer_factory(host=1)
    await copies.run_model(sender, receiver, copies.at_scale(1000, 20), size=1000)
    assert (await receiver.stats())["queued"] == 0
