"""Channels: every value type, FIFO, independence, process-specific names, concurrent and
cancelled receives."""

from __future__ import annotations

import asyncio
import contextlib
import random
import re

import pytest
from asgiref.sync import async_to_sync

from layer.base import BaseChannelLayer
from layer.exceptions import ChannelFull, LayerClosed, NotOwnChannel
from tests.layer.conftest import LayerFactory
from tests.layer.receiving import assert_empty, receive_soon, received_by_short_loops

# -- basics -----------------------------------------------------------------------------------


async def test_send_receive_keeps_every_value_type(channel_layer: BaseChannelLayer) -> None:
    message = {
        "type": "test.message",
        "text": "héllo ✓",
        "bytes": b"\x00\xff",
        "int": -(2**63),
        "big": 2**63 - 1,
        "float": 1.5,
        "bool": True,
        "none": None,
        "list": [1, "a", [b"x"], {"k": None}],
        "dict": {"nested": {"deep": [1.0, False]}},
    }
    await channel_layer.send("test-channel", message)
    assert await receive_soon(channel_layer, "test-channel") == message


async def test_tuples_arrive_as_lists(channel_layer: BaseChannelLayer) -> None:
    await channel_layer.send("c", {"type": "t", "tuple": (1, 2)})
    assert (await receive_soon(channel_layer, "c"))["tuple"] == [1, 2]


async def test_send_trusted_delivers_in_order_within_capacity(
    layer_factory: LayerFactory,
) -> None:
    layer = layer_factory(capacity=2)
    first = {"type": "k.x", "c": "a.1", "b": b"\x00", "l": [[b"n", b"v"]], "m": False}
    await layer.send_trusted("trusted", first)
    await layer.send("trusted", {"type": "k.y"})  # trusted and plain sends share the queue
    with pytest.raises(ChannelFull):
        await layer.send_trusted("trusted", {"type": "k.z"})
    assert await receive_soon(layer, "trusted") == first
    assert (await receive_soon(layer, "trusted"))["type"] == "k.y"


async def test_fifo_per_channel(channel_layer: BaseChannelLayer) -> None:
    for i in range(50):
        await channel_layer.send("fifo", {"type": "n", "i": i})
    assert [(await receive_soon(channel_layer, "fifo"))["i"] for _ in range(50)] == list(range(50))


async def test_channels_are_independent(channel_layer: BaseChannelLayer) -> None:
    await channel_layer.send("one", {"type": "a"})
    await channel_layer.send("two", {"type": "b"})
    assert (await receive_soon(channel_layer, "two"))["type"] == "b"
    assert (await receive_soon(channel_layer, "one"))["type"] == "a"


async def test_receive_waits_for_a_later_send(channel_layer: BaseChannelLayer) -> None:
    waiting = asyncio.ensure_future(channel_layer.receive("later"))
    await asyncio.sleep(0.05)
    assert not waiting.done()
    await channel_layer.send("later", {"type": "late"})
    assert (await asyncio.wait_for(waiting, 2))["type"] == "late"


async def test_mutating_after_send_does_not_change_what_is_received(
    channel_layer: BaseChannelLayer,
) -> None:
    message = {"type": "m", "items": [1]}
    await channel_layer.send("mut", message)
    message["items"].append(2)
    message["type"] = "changed"
    assert await receive_soon(channel_layer, "mut") == {"type": "m", "items": [1]}


async def test_extensions(channel_layer: BaseChannelLayer) -> None:
    assert "groups" in channel_layer.extensions
    assert "flush" in channel_layer.extensions


# -- process-specific channels ----------------------------------------------------------------


async def test_new_channel_is_process_specific_and_unique(channel_layer: BaseChannelLayer) -> None:
    first = await channel_layer.new_channel()
    second = await channel_layer.new_channel("http.response")
    assert re.fullmatch(r"specific\.[A-Za-z0-9]+![A-Za-z0-9]+", first)
    assert second.startswith("http.response.") and "!" in second
    assert first != second
    assert len({await channel_layer.new_channel() for _ in range(200)}) == 200
    await channel_layer.send(first, {"type": "to.first"})
    await channel_layer.send(second, {"type": "to.second"})
    assert (await receive_soon(channel_layer, second))["type"] == "to.second"
    assert (await receive_soon(channel_layer, first))["type"] == "to.first"


async def test_process_specific_names_are_received_by_full_name(
    channel_layer: BaseChannelLayer,
) -> None:
    own = (await channel_layer.new_channel("proc")).split("!")[0]
    await channel_layer.send(f"{own}!abc", {"type": "x"})
    await assert_empty(channel_layer, f"{own}!other")
    assert (await receive_soon(channel_layer, f"{own}!abc"))["type"] == "x"


async def test_declared_capabilities_hold(channel_layer: BaseChannelLayer) -> None:
    """What a backend declares on the base (services ask it instead of testing types): one
    that hands message objects over never crosses processes, and a trusted send reaches the
    receive as the very object exactly when it says so; only Redis-backed layers have shards."""
    message = {"type": "capability", "n": [1, 2]}
    channel = await channel_layer.new_channel()
    await channel_layer.send_trusted(channel, message)
    got = await receive_soon(channel_layer, channel)
    assert got == message
    assert (got is message) is channel_layer.hands_over_objects
    assert not (channel_layer.hands_over_objects and channel_layer.cross_process)
    redis = type(channel_layer).__name__ in ("RedisChannelLayer", "LocalRedisChannelLayer")
    assert bool(channel_layer.shard_names()) is redis


async def test_receive_on_another_clients_process_specific_channel_is_refused_at_once(
    layer_factory: LayerFactory,
) -> None:
    """Across processes it would hang (or take the other client's messages): refused, as
    channels_redis refuses it (an AssertionError). In one process every name is its own."""
    one, two = layer_factory(), layer_factory()
    theirs = await two.new_channel()
    if not one.cross_process:
        await one.send(theirs, {"type": "x"})
        assert (await receive_soon(one, theirs))["type"] == "x"
        return
    for name in (theirs, "not-client-prefix!local_part", f"x{one.client_id}y!z"):
        with pytest.raises(NotOwnChannel, match="process-specific channel of another client"):
            await asyncio.wait_for(one.receive(name), 5)  # a hang guard: it raises at once
    with pytest.raises(AssertionError):
        await one.receive(theirs)


async def test_new_channel_differs_between_layer_instances(layer_factory: LayerFactory) -> None:
    one, two = layer_factory(), layer_factory()
    assert (await one.new_channel()).split("!")[0] != (await two.new_channel()).split("!")[0]


# -- concurrency and cancellation --------------------------------------------------------------


async def test_concurrent_receivers_get_distinct_messages(channel_layer: BaseChannelLayer) -> None:
    receivers = [asyncio.ensure_future(channel_layer.receive("shared")) for _ in range(20)]
    await asyncio.sleep(0.05)
    for i in range(20):
        await channel_layer.send("shared", {"type": "n", "i": i})
    results = await asyncio.wait_for(asyncio.gather(*receivers), 5)
    assert sorted(m["i"] for m in results) == list(range(20))


async def test_cancelled_receive_does_not_lose_messages_under_load(
    layer_factory: LayerFactory,
) -> None:
    layer = layer_factory(capacity=10_000)
    total, received, sent = 3000, [], 0
    rng = random.Random(7)

    async def receiver() -> None:
        while len(received) < total:
            task = asyncio.ensure_future(layer.receive("cancel"))
            await asyncio.sleep(0) if rng.random() < 0.5 else None
            if rng.random() < 0.5:
                task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                received.append((await task)["i"])

    consumer = asyncio.ensure_future(receiver())
    while sent < total:
        for _ in range(rng.randint(1, 5)):
            if sent < total:
                await layer.send("cancel", {"type": "n", "i": sent})
                sent += 1
        await asyncio.sleep(0)
    await asyncio.wait_for(consumer, 60)
    assert sorted(received) == list(range(total)), "lost or duplicated messages"
    assert received == list(range(total)), "order changed by cancellation"


async def test_receive_with_timeout_loses_nothing(channel_layer: BaseChannelLayer) -> None:
    got: list[int] = []
    for i in range(200):
        with contextlib.suppress(TimeoutError):
            got.append((await asyncio.wait_for(channel_layer.receive("to"), 0.001))["i"])
        if i % 2 == 0:
            await channel_layer.send("to", {"type": "n", "i": i})
    while True:
        try:
            got.append((await asyncio.wait_for(channel_layer.receive("to"), 0.2))["i"])
        except TimeoutError:
            break
    assert got == list(range(0, 200, 2))


@pytest.mark.timeout(90)
def test_sync_code_receiving_in_short_lived_loops_gets_every_message_once(
    layer_factory: LayerFactory,
) -> None:
    """Django's sync code receives through ``async_to_sync`` (a fresh event loop per call,
    ended as soon as the call returns) with a 3 ms timeout while a thread with its own loop
    streams: loops end mid-receive, with a pop in flight or just answered,
    and not one message may be lost, doubled or reordered. (The Redis layer lost and doubled
    some until stop 29; the Redis-specific tests take it further: tests/layer/redis.)"""
    layer = layer_factory(capacity=10_000)  # the thread sends through it too, from its loop
    reply = async_to_sync(layer.new_channel)("reply")
    got = received_by_short_loops(layer, layer, reply, 400)
    assert got == list(range(400)), f"{400 - len(set(got))} lost, {len(got) - len(set(got))} twice"


async def test_after_close_a_layer_works_again_or_says_it_is_closed(
    channel_layer: BaseChannelLayer,
) -> None:
    """Redis and in-memory layers reopen on the next call; a closed IPC layer (and the IPC
    half of a Local + Redis one) is closed for good, and says so on every call instead of
    losing a send or failing with a bare OSError (as it did until stop 29)."""
    await channel_layer.send("before-close", {"type": "t"})
    await channel_layer.close()
    try:
        await channel_layer.send("after-close", {"type": "t", "n": 1})
    except LayerClosed:
        for call in (
            channel_layer.receive("before-close"),
            channel_layer.group_add("g", "after-close"),
            channel_layer.group_send("g", {"type": "t"}),
            channel_layer.flush(),
        ):
            with pytest.raises(LayerClosed):
                await call
        return
    assert await receive_soon(channel_layer, "after-close") == {"type": "t", "n": 1}
