"""Parked receives (``layer.ipc.receivers``), doorbells and the registry of instances: wakes
across processes and event loops, rings that overflow, chimes read after their wakes, spinning.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Callable

import pytest

from layer.ipc import IPCChannelLayer
from tests.layer.ipc.fixture import Worker

Factory = Callable[..., IPCChannelLayer]


async def test_restarted_receiver_reattaches_and_receives(
    ipc_layer_factory: Factory, ipc_prefix: str, workers: list[Worker]
) -> None:
    """A receiver killed while waiting leaves a dead waiter; its restart still gets messages."""
    layer = ipc_layer_factory()
    first = Worker("wait", ipc_prefix, "r.inbox")
    workers.append(first)
    await first.expect("ready")
    await asyncio.sleep(0.2)  # let it register as a waiter, then kill it
    first.kill()
    restarted = Worker("wait", ipc_prefix, "r.inbox")
    workers.append(restarted)
    await restarted.expect("ready")
    await asyncio.sleep(0.2)  # the restart waits behind the dead waiter
    await layer.send("r.inbox", {"type": "hello", "n": 1})
    assert json.loads(await restarted.line()) == {"type": "hello", "n": 1}
    assert restarted.proc.wait(timeout=30) == 0


async def test_doorbells_reach_each_owner_of_a_record_in_turn(
    ipc_layer_factory: Factory, ipc_prefix: str, workers: list[Worker]
) -> None:
    """The sender keeps one descriptor per doorbell: it must reach a record's next owner after a
    clean exit, and survive ringing an owner that was killed (EPIPE) without losing the message."""
    layer = ipc_layer_factory()

    async def waiter() -> Worker:
        worker = Worker("wait", ipc_prefix, "d.chan")
        workers.append(worker)
        await worker.expect("ready")
        await asyncio.sleep(0.2)  # let it register as a waiter
        return worker

    for n in range(2):  # the second owner of the record is rung through the cached descriptor
        worker = await waiter()
        await layer.send("d.chan", {"type": "ring", "n": n})
        assert json.loads(await worker.line()) == {"type": "ring", "n": n}
        assert worker.proc.wait(timeout=30) == 0
    (await waiter()).kill()
    await layer.send("d.chan", {"type": "ring", "n": 2})  # fires the dead waiter: EPIPE
    await asyncio.sleep(0)  # the send was held in the outbox until the end of this loop turn
    assert not layer.debug_state().ringing
    worker = await waiter()
    assert json.loads(await worker.line()) == {"type": "ring", "n": 2}
    assert worker.proc.wait(timeout=30) == 0


async def test_more_wakes_than_the_ring_holds(ipc_layer_factory: Factory) -> None:
    """200 receivers of one instance woken by one group send: the ring (64) overflows."""
    layer, sender = ipc_layer_factory(), ipc_layer_factory()
    members = [f"ring.{n}" for n in range(200)]
    waiting = [asyncio.ensure_future(layer.receive(member)) for member in members]
    await asyncio.sleep(0.1)
    for member in members:
        await sender.group_add("ring-group", member)
    await sender.group_send("ring-group", {"type": "wake"})
    done = await asyncio.wait_for(asyncio.gather(*waiting), 10)
    assert [m["type"] for m in done] == ["wake"] * 200
    assert (await layer.stats())["queued"] == 0


async def test_chimes_are_all_read_after_their_wakes(ipc_layer_factory: Factory) -> None:
    """Wakes are delivered before their chimes are read (a turn later): every wake arrives,
    including one rung while an earlier chime was unread, and then the FIFO is empty, so the
    loop sleeps instead of calling the reader again and again."""
    layer, sender = ipc_layer_factory(), ipc_layer_factory()
    for round_ in range(20):
        first = asyncio.ensure_future(layer.receive("chime.a"))
        second = asyncio.ensure_future(layer.receive("chime.b"))
        await asyncio.sleep(0)  # both registered, the doorbell watched
        await sender.send("chime.a", {"type": "a", "i": round_})
        if round_ % 2:
            await asyncio.sleep(0)  # the first wake is delivered, its chime not yet read
        await sender.send("chime.b", {"type": "b", "i": round_})
        got = await asyncio.wait_for(asyncio.gather(first, second), 10)
        assert got == [{"type": "a", "i": round_}, {"type": "b", "i": round_}]
    for _ in range(3):
        await asyncio.sleep(0)
    assert not layer.debug_state().deferred
    with pytest.raises(BlockingIOError):
        os.read(layer.parts.receivers.bell.fd, 1)


async def test_a_spinning_receiver_is_woken_without_its_doorbell(
    ipc_layer_factory: Factory,
) -> None:
    """While a parked receive polls (``spin``), a sender skips the FIFO write: it never even
    opens the receiver's doorbell; once the spin ends the receiver sleeps and is rung."""
    layer, sender = ipc_layer_factory(spin=30), ipc_layer_factory(spin=0)
    waiting = asyncio.ensure_future(layer.receive("spin.a"))
    await asyncio.sleep(0.05)
    assert layer.debug_state().spinning
    await sender.send("spin.a", {"type": "polled"})
    assert (await asyncio.wait_for(waiting, 10))["type"] == "polled"
    assert layer.debug_state().waker not in sender.debug_state().ringing

    layer.spin = 0.01
    waiting = asyncio.ensure_future(layer.receive("spin.b"))
    await asyncio.sleep(0.3)  # the spin restarted with the new length, and ended
    assert not layer.debug_state().spinning
    await sender.send("spin.b", {"type": "rung"})
    assert (await asyncio.wait_for(waiting, 10))["type"] == "rung"
    assert layer.debug_state().waker in sender.debug_state().ringing


async def test_a_spin_outlasts_the_receive_it_served(ipc_layer_factory: Factory) -> None:
    """A receive served while spinning leaves the spin on (until ``spin`` after the last park):
    the next receive polls on without a second locked drain and two flag writes per wake, and
    its sender still skips the doorbell."""
    layer, sender = ipc_layer_factory(spin=30), ipc_layer_factory(spin=0)
    for i in range(3):
        waiting = asyncio.ensure_future(layer.receive("spin.c"))
        await asyncio.sleep(0.01)
        await sender.send("spin.c", {"type": "polled", "i": i})
        assert (await asyncio.wait_for(waiting, 10))["i"] == i
        for _ in range(3):
            await asyncio.sleep(0)
        assert layer.debug_state().spinning
    assert layer.debug_state().waker not in sender.debug_state().ringing


def test_a_layer_waits_in_one_event_loop_after_another(ipc_prefix: str) -> None:
    """The doorbell is watched by the loop of the latest waiting receive (asyncio.run twice)."""
    layer = IPCChannelLayer(prefix=ipc_prefix, size="4MB")
    sender = IPCChannelLayer(prefix=ipc_prefix, size="4MB")

    async def wait_then_send(n: int) -> dict:
        waiting = asyncio.ensure_future(layer.receive("loops"))
        await asyncio.sleep(0.05)
        await sender.send("loops", {"type": "x", "n": n})
        return await asyncio.wait_for(waiting, 10)

    try:
        for n in range(2):
            assert asyncio.run(wait_then_send(n))["n"] == n
    finally:
        asyncio.run(sender.close())
        asyncio.run(layer.close(unlink=True))
