"""The IPC undo journal holds a few kilobytes: every mutation must fit it in bounded steps,
whatever the data (expired messages, dead waiters, woken instances, channels waited on)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest

from layer.ipc import IPCChannelLayer
from layer.ipc.extents import step_bound
from layer.ipc.layout import JOURNAL_END, JOURNAL_OFF
from tests.layer.ipc.fixture import Worker
from tests.layer.receiving import receive_soon

Factory = Callable[..., IPCChannelLayer]
# One expired message dropped on its own took a 104-byte record: this many overflowed the journal.
RECORDS_THAT_OVERFLOWED = (JOURNAL_END - JOURNAL_OFF) // 104 + 1


async def test_the_reported_fifty_expired_messages(ipc_layer_factory: Factory) -> None:
    """The issue's reproduction, as written: every later receive on the channel failed."""
    layer = ipc_layer_factory(expiry=1, capacity=100000)
    for i in range(50):
        await layer.send("q", {"type": "t", "i": i})
    await asyncio.sleep(1.5)
    await layer.send("q", {"type": "t", "i": "fresh"})
    assert (await receive_soon(layer, "q"))["i"] == "fresh"
    assert layer.counters.expired == 50


@pytest.mark.parametrize("count", [RECORDS_THAT_OVERFLOWED, 300, 2000, 20_000])
async def test_any_number_of_expired_messages_is_dropped_on_receive(
    ipc_layer_factory: Factory, count: int
) -> None:
    """One-slot and multi-slot messages mixed: all dropped, the fresh one after them arrives,
    the segment's counts go back to zero and it keeps working."""
    layer = ipc_layer_factory(expiry=0.5, capacity=100_000, size="64MB")
    for i in range(count):
        await layer.send("e.q", {"type": "t", "i": i, "pad": b"x" * (i % 7 * 150)})
    await asyncio.sleep(0.7)
    await layer.send("e.q", {"type": "t", "i": "fresh"})
    assert (await receive_soon(layer, "e.q"))["i"] == "fresh"
    assert layer.counters.expired == count
    stats = await layer.stats()
    assert (stats["queued"], stats["channels"]) == (0, 0)
    again = ipc_layer_factory(capacity=100_000)  # the same segment, a 60 s expiry
    for i in range(count):  # every freed slot is usable again
        await again.send("e.again", {"type": "t", "i": i, "pad": b"x" * (i % 7 * 150)})
    assert [(await receive_soon(again, "e.again"))["i"] for _ in range(count)] == list(range(count))


async def test_expired_messages_before_live_ones_are_dropped_and_the_rest_kept_in_order(
    ipc_layer_factory: Factory,
) -> None:
    sender = ipc_layer_factory(expiry=0.5, capacity=100_000)
    for i in range(500):
        await sender.send("e.mixed", {"type": "old", "i": i})
    await asyncio.sleep(0.7)
    for i in range(500):
        await sender.send("e.mixed", {"type": "new", "i": i, "pad": b"y" * (i % 3 * 300)})
    receiver = ipc_layer_factory(expiry=0.5, capacity=100_000)
    got = [await receive_soon(receiver, "e.mixed") for _ in range(500)]
    assert [(m["type"], m["i"]) for m in got] == [("new", i) for i in range(500)]
    assert receiver.counters.expired == 500


async def test_a_channel_full_of_expired_messages_takes_a_send(ipc_layer_factory: Factory) -> None:
    """A send to a channel at its capacity drops the expired messages first (one step)."""
    layer = ipc_layer_factory(expiry=0.5, capacity=1000)
    for i in range(1000):
        await layer.send("e.full", {"type": "t", "i": i})
    await asyncio.sleep(0.7)
    await layer.send("e.full", {"type": "t", "i": "fresh"})
    assert layer.counters.expired == 1000
    assert (await receive_soon(layer, "e.full"))["i"] == "fresh"


async def test_group_send_to_members_full_of_expired_messages(ipc_layer_factory: Factory) -> None:
    layer = ipc_layer_factory(expiry=0.5, capacity=200)
    members = [f"e.member.{n}" for n in range(50)]
    for member in members:
        await layer.group_add("e.group", member)
        for i in range(200):
            await layer.send(member, {"type": "old", "i": i})
    await asyncio.sleep(0.7)
    await layer.group_send("e.group", {"type": "fresh"})
    for member in members:
        assert (await receive_soon(layer, member))["type"] == "fresh"
    assert layer.counters.expired == 50 * 200


async def test_a_live_waiter_behind_forty_dead_ones_gets_the_message(
    ipc_layer_factory: Factory, ipc_prefix: str, workers: list[Worker]
) -> None:
    """Forty processes killed while waiting on one channel, a live receiver behind them: the
    send fires the first dead node, and the live receiver's reaper frees all forty (one
    journal step each), passing the wake on from one to the next until it reaches itself."""
    waiters = [Worker("wait", ipc_prefix, "d.q") for _ in range(40)]
    workers.extend(waiters)
    for waiter in waiters:
        await waiter.expect("ready")
    await asyncio.sleep(0.5)  # each registers its node right after saying ready
    for waiter in waiters:
        waiter.kill()
    receiver = ipc_layer_factory(spin=0)
    pending = asyncio.ensure_future(receiver.receive("d.q"))
    await asyncio.sleep(0.05)  # registered behind the dead
    await ipc_layer_factory().send("d.q", {"type": "after the dead"})
    assert (await asyncio.wait_for(pending, 3))["type"] == "after the dead"


async def test_a_burst_wakes_many_waiting_instances(ipc_layer_factory: Factory) -> None:
    """64 held sends flushed as one run fire one waiter each: 48 instances are woken."""
    receivers = [ipc_layer_factory(spin=0) for _ in range(48)]
    pending = [asyncio.ensure_future(r.receive("b.q")) for r in receivers]
    await asyncio.sleep(0.2)
    sender = ipc_layer_factory()
    for i in range(64):  # one loop turn: held, and flushed whole by the 64th
        await sender.send("b.q", {"type": "t", "i": i})
    first = await asyncio.wait_for(asyncio.gather(*pending), 5)
    rest = [await receive_soon(receivers[0], "b.q") for _ in range(16)]
    assert sorted(m["i"] for m in first + rest) == list(range(64))


async def test_one_instance_waiting_on_many_channels_is_woken_on_all(
    ipc_layer_factory: Factory,
) -> None:
    """Two receives on each of 200 channels: one wake drains a ring of up to 64 (and the
    overflow scan), re-registering every channel. (Each channel's take committed the one
    before it, so this stayed within the journal before it was bounded explicitly.)"""
    receiver = ipc_layer_factory(spin=0)
    channels = [f"m.chan.{n}" for n in range(200)]
    pending = [asyncio.ensure_future(receiver.receive(c)) for c in channels for _ in range(2)]
    await asyncio.sleep(0.2)
    sender = ipc_layer_factory()
    for round_ in range(2):
        for channel in channels:
            await sender.send(channel, {"type": "t", "round": round_})
        await asyncio.sleep(0)
    got = await asyncio.wait_for(asyncio.gather(*pending), 10)
    assert sorted(m["round"] for m in got) == [0] * 200 + [1] * 200


async def test_a_flush_while_waiting_on_many_channels(ipc_layer_factory: Factory) -> None:
    """After a flush every node is gone: the waiting instance re-registers its 300 channels,
    one journal step each, and still receives on all of them."""
    receiver = ipc_layer_factory(spin=0)
    channels = [f"f.chan.{n}" for n in range(300)]
    pending = [asyncio.ensure_future(receiver.receive(c)) for c in channels]
    await asyncio.sleep(0.2)
    other = ipc_layer_factory()
    await other.flush()
    await asyncio.sleep(0.2)  # the flush rang the receiver: it re-registers
    for channel in channels:
        await other.send(channel, {"type": "t", "channel": channel})
    got = await asyncio.wait_for(asyncio.gather(*pending), 10)
    assert [m["channel"] for m in got] == channels


async def test_the_largest_journal_step_of_a_mixed_workload(
    ipc_layer_factory: Factory, journal_steps: list[int]
) -> None:
    """Every kind of mutation at volume, with the size of each journal step recorded at its
    commit: the largest stays a small fraction of the journal (docs/ipc.md, "Bounds")."""
    steps = journal_steps
    a = ipc_layer_factory(expiry=0.3, capacity=500, spin=0)
    b = ipc_layer_factory(expiry=0.3, capacity=500, spin=0)
    members = [f"w.member.{n}" for n in range(300)]
    for member in members:
        await a.group_add("w.group", member)
    for i in range(400):
        await a.send("w.q", {"type": "t", "i": i, "pad": b"p" * (i % 5 * 400)})
        if i % 100 == 0:
            await a.group_send("w.group", {"type": "g", "i": i})
    waiting = [asyncio.ensure_future(b.receive(f"w.wait.{n}")) for n in range(100)]
    await asyncio.sleep(0.4)  # everything queued so far expires
    for member in members[:150]:
        await a.group_discard("w.group", member)
    await a.group_send("w.group", {"type": "g", "i": "fresh"})
    for n in range(100):
        await a.send(f"w.wait.{n}", {"type": "t"})
    await asyncio.wait_for(asyncio.gather(*waiting), 5)
    for i in range(200):
        await a.send("w.q", {"type": "t", "i": i})
    assert [(await receive_soon(b, "w.q"))["i"] for _ in range(200)] == list(range(200))
    again = [asyncio.ensure_future(b.receive(f"w.wait.{n}")) for n in range(100)]
    await asyncio.sleep(0.05)
    await a.flush()
    for n in range(100):
        await a.send(f"w.wait.{n}", {"type": "t"})
    await asyncio.wait_for(asyncio.gather(*again), 5)
    largest = max(steps)
    print(f"{len(steps)} journal steps, the largest {largest} bytes of {JOURNAL_END - JOURNAL_OFF}")
    extents = a.parts.storage.extents  # the largest message here is 1,600 bytes of padding + ~30
    assert largest <= 400 + step_bound(extents.plan(1700), extents.top)


async def test_a_send_right_after_a_flush_reaches_a_receiver_waiting_before_it(
    ipc_layer_factory: Factory,
) -> None:
    """The flush drops every waiter node; sends that come before the waiting instance has
    re-registered find none. Re-registering hands those messages over (it used to leave the
    receives waiting for a next send that might never come)."""
    receiver = ipc_layer_factory(spin=0)
    pending = [asyncio.ensure_future(receiver.receive(f"r.chan.{n}")) for n in range(50)]
    await asyncio.sleep(0.05)
    other = ipc_layer_factory()
    await other.flush()
    for n in range(50):  # at once, before the receiver's loop has run
        await other.send(f"r.chan.{n}", {"type": "t", "n": n})
    got = await asyncio.wait_for(asyncio.gather(*pending), 3)
    assert [m["n"] for m in got] == list(range(50))
