"""IPC receives taking messages ahead: order, give-back to other processes, expiry, cancel, flush."""

from __future__ import annotations

import asyncio
import json
import random
from collections.abc import Callable

import pytest

from layer.flow import PREFETCH
from layer.ipc import IPCChannelLayer
from tests.layer.ipc.fixture import Worker

Factory = Callable[..., IPCChannelLayer]


async def send_all(sender: IPCChannelLayer, channel: str, numbers: range) -> None:
    """Send numbered messages and have them in the segment (held sends flushed) on return."""
    for i in numbers:
        await sender.send(channel, {"type": "n", "i": i})
    await sender.stats()


async def test_a_process_specific_channel_is_taken_ahead_and_served_in_order(
    ipc_layer_factory: Factory, ipc_prefix: str, workers: list[Worker]
) -> None:
    layer = ipc_layer_factory()
    channel = await layer.new_channel("a")
    sender = Worker("stream-to", ipc_prefix, 0, channel, 100)
    workers.append(sender)
    assert (await sender.result())["sent"] == 100
    assert (await layer.receive(channel))["i"] == 0
    assert sum(layer.debug_state().held.values()) == PREFETCH
    stats = await layer.stats()  # held messages count as queued, their channel once
    assert (stats["queued"], stats["channels"]) == (99, 1)
    assert [(await layer.receive(channel))["i"] for _ in range(99)] == list(range(1, 100))
    stats = await layer.stats()
    assert (stats["queued"], stats["channels"]) == (0, 0)


async def test_held_messages_no_longer_count_against_capacity(ipc_layer_factory: Factory) -> None:
    sender, receiver = ipc_layer_factory(capacity=5), ipc_layer_factory()
    channel = await receiver.new_channel("a")
    await send_all(sender, channel, range(5))
    assert (await receiver.receive(channel))["i"] == 0  # takes the other four ahead
    assert (await receiver.stats())["channels"] == 1  # none left in the segment, four held
    await send_all(sender, channel, range(5, 10))  # room for five again, as with Redis
    assert [(await receiver.receive(channel))["i"] for _ in range(9)] == list(range(1, 10))


@pytest.mark.parametrize("then", ["wait", "close", "block", "exit"])
async def test_a_shared_channels_held_messages_go_back_for_another_process(
    then: str, ipc_layer_factory: Factory, ipc_prefix: str, workers: list[Worker]
) -> None:
    """The taker receives two in a row (the second takes the other eight ahead) and no more:
    they go back to the front after the delay (``wait``; also while its event loop is blocked,
    ``block``), at its ``close()`` (``close``), or when it exits without closing (``exit``),
    and this process receives them, each message exactly once, in order."""
    layer = ipc_layer_factory()
    taker = Worker("take-two", ipc_prefix, "a.work", then)
    workers.append(taker)
    await taker.expect("ready")
    await send_all(layer, "a.work", range(10))
    taker.tell("go")
    assert json.loads(await taker.line()) == {"got": [0, 1], "held": [0, 8]}
    got = [(await asyncio.wait_for(layer.receive("a.work"), 10))["i"] for _ in range(8)]
    assert got == list(range(2, 10))
    if then in ("wait", "block"):
        taker.tell("stop")
    if then != "exit":
        # Sent back by the return thread, which then stopped (an idle process has none), or
        # by close()
        held, returning = (0, False) if then in ("wait", "block") else (8, True)
        assert json.loads(await taker.line()) == {"held_at_close": held, "returning": returning}
    assert await asyncio.to_thread(taker.proc.wait) == 0
    stats = await layer.stats()
    assert (stats["queued"], stats["channels"]) == (0, 0)


async def test_an_expired_held_message_is_not_delivered(ipc_layer_factory: Factory) -> None:
    sender, receiver = ipc_layer_factory(expiry=0.5), ipc_layer_factory()
    channel = await receiver.new_channel("a")
    await send_all(sender, channel, range(5))
    assert (await receiver.receive(channel))["i"] == 0
    assert sum(receiver.debug_state().held.values()) == 4
    await asyncio.sleep(0.6)  # the held four are past their expiry now
    await send_all(sender, channel, range(5, 6))
    assert (await receiver.receive(channel))["i"] == 5
    assert receiver.counters.expired == 4
    assert (await receiver.stats())["queued"] == 0


async def test_receives_cancelled_while_taking_ahead_lose_nothing_in_order(
    ipc_layer_factory: Factory, ipc_prefix: str, workers: list[Worker]
) -> None:
    """Receives timing out at random moments, some served from held messages, some waiting
    for a wake that takes ahead: every message once, in order."""
    layer = ipc_layer_factory()
    channel = await layer.new_channel("a")
    count = 3000
    workers.append(Worker("stream-to", ipc_prefix, 0, channel, count))
    rng = random.Random(11)
    got: list[int] = []
    timeouts = 0
    while len(got) < count:
        try:
            message = await asyncio.wait_for(layer.receive(channel), rng.uniform(0, 0.002))
        except TimeoutError:
            timeouts += 1
        else:
            got.append(message["i"])
    assert got == list(range(count))
    assert (await workers[0].result())["sent"] == count
    print(f"{timeouts} receives timed out while messages flowed")


async def test_concurrent_receives_cancelled_at_random_lose_and_repeat_nothing(
    ipc_layer_factory: Factory, ipc_prefix: str, workers: list[Worker]
) -> None:
    layer = ipc_layer_factory()
    count = 3000
    workers.append(Worker("stream-to", ipc_prefix, 0, "a.shared", count))
    rng = random.Random(13)
    got: list[int] = []

    async def impatient() -> None:
        while len(got) < count:
            try:
                message = await asyncio.wait_for(layer.receive("a.shared"), rng.uniform(0, 0.003))
            except TimeoutError:
                continue
            got.append(message["i"])

    await asyncio.gather(*(impatient() for _ in range(4)))
    assert sorted(got) == list(range(count))
    assert (await layer.stats())["queued"] == 0


@pytest.mark.parametrize("kind", ["process-specific", "shared"])
async def test_flush_empties_what_was_taken_ahead(kind: str, ipc_layer_factory: Factory) -> None:
    sender, receiver = ipc_layer_factory(), ipc_layer_factory()
    channel = await receiver.new_channel("a") if kind == "process-specific" else "a.shared"
    await send_all(sender, channel, range(10))
    first = [(await receiver.receive(channel))["i"] for _ in range(2)]  # the second takes ahead
    assert first == [0, 1]
    assert sum(receiver.debug_state().held.values()) == 8
    await receiver.flush()
    assert sum(receiver.debug_state().held.values()) == 0
    assert (await receiver.stats())["queued"] == 0
    await send_all(sender, channel, range(10, 11))
    assert (await receiver.receive(channel))["i"] == 10
