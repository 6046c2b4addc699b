"""Limits: capacity and its patterns, expiry, message checks and size, and the counters that
say what happened."""

from __future__ import annotations

import asyncio
import random
import re

import pytest
from channels.exceptions import ChannelFull as ChannelsChannelFull

from layer.base import BaseChannelLayer
from layer.exceptions import ChannelFull, MessageTooLarge
from tests.layer.conftest import LayerFactory
from tests.layer.receiving import MB, assert_empty, receive_soon

# -- capacity ---------------------------------------------------------------------------------


async def test_send_raises_channel_full_at_capacity(layer_factory: LayerFactory) -> None:
    layer = layer_factory(capacity=3)
    for i in range(3):
        await layer.send("full", {"type": "n", "i": i})
    with pytest.raises(ChannelFull):
        await layer.send("full", {"type": "n", "i": 3})
    with pytest.raises(ChannelsChannelFull):  # Channels code catches ours unchanged
        await layer.send("full", {"type": "n", "i": 3})
    assert [(await receive_soon(layer, "full"))["i"] for _ in range(3)] == [0, 1, 2]
    await layer.send("full", {"type": "n", "i": 4})  # room again after receiving
    assert (await receive_soon(layer, "full"))["i"] == 4


@pytest.mark.parametrize(
    "channel_capacity",
    [
        {"small.*": 2, "big": 5},
        [("small.*", 2), ("big", 5)],
        {re.compile(r"^small\..*"): 2, re.compile(r"^big$"): 5},
    ],
    ids=["glob-dict", "pairs", "regex"],
)
async def test_channel_capacity_patterns(layer_factory: LayerFactory, channel_capacity) -> None:
    layer = layer_factory(capacity=10, channel_capacity=channel_capacity)
    assert layer.get_capacity("small.one") == 2
    assert layer.get_capacity("big") == 5
    assert layer.get_capacity("other") == 10
    assert layer.get_capacity("small.proc!abc") == 2  # routed by the part up to '!'
    for _ in range(2):
        await layer.send("small.one", {"type": "x"})
    with pytest.raises(ChannelFull):
        await layer.send("small.one", {"type": "x"})
    for _ in range(5):
        await layer.send("big", {"type": "x"})
    with pytest.raises(ChannelFull):
        await layer.send("big", {"type": "x"})


async def test_first_matching_capacity_pattern_wins(layer_factory: LayerFactory) -> None:
    layer = layer_factory(channel_capacity=[("a.b*", 3), ("a.*", 7)])
    assert layer.get_capacity("a.bc") == 3
    assert layer.get_capacity("a.c") == 7


@pytest.mark.parametrize(
    "options",
    [
        {"capacity": 0},
        {"capacity": "ten"},
        {"expiry": -1},
        {"channel_capacity": {"x": 0}},
        {"channel_capacity": {1: 3}},
        {"group_expiry": "soon"},
        {"max_message_size": "huge"},
    ],
)
def test_bad_options_are_rejected_by_name(layer_factory: LayerFactory, options) -> None:
    with pytest.raises(ValueError, match=next(iter(options))):
        layer_factory(**options)


# -- expiry -----------------------------------------------------------------------------------


async def test_expired_messages_are_never_delivered(layer_factory: LayerFactory) -> None:
    layer = layer_factory(expiry=0.3, capacity=2)
    await layer.send("exp", {"type": "old"})
    await layer.send("exp", {"type": "old"})
    await asyncio.sleep(0.5)
    await layer.send("exp", {"type": "new"})  # expired messages free their capacity
    assert (await receive_soon(layer, "exp"))["type"] == "new"
    await assert_empty(layer, "exp")
    assert (await layer.stats())["expired"] >= 1


async def test_group_membership_lapses_after_group_expiry(layer_factory: LayerFactory) -> None:
    layer = layer_factory(group_expiry=0.3)
    await layer.group_add("lapsing", "member")
    await asyncio.sleep(0.5)
    await layer.group_send("lapsing", {"type": "late"})
    await assert_empty(layer, "member")
    await layer.group_add("lapsing", "member")  # rejoining works
    await layer.group_send("lapsing", {"type": "again"})
    assert (await receive_soon(layer, "member"))["type"] == "again"


# -- messages ---------------------------------------------------------------------------------

BAD_MESSAGES = [
    ({"type": "t", "a": [1, 2, {3}]}, r'message\["a"\]\[2\]: set not allowed'),
    ({"type": "t", "o": object()}, r'message\["o"\]: object not allowed'),
    ({"type": "t", "n": {"deep": 2**70}}, r'message\["n"\]\["deep"\]: int .* signed 64-bit'),
    ({"type": "t", "n": 2**63}, r"signed 64-bit"),
    ({"type": "t", "d": {1: "x"}}, r'message\["d"\]: dict key 1 is int'),
    ({"text": "no type"}, r'message\["type"\]'),
    ({"type": 5}, r'message\["type"\]'),
    (["type", "t"], r"must be a dict"),
]


@pytest.mark.parametrize(("message", "error"), BAD_MESSAGES)
async def test_bad_messages_name_the_path_and_lose_nothing(
    channel_layer: BaseChannelLayer, message, error
) -> None:
    await channel_layer.send("keep", {"type": "before"})
    with pytest.raises(TypeError, match=error):
        await channel_layer.send("keep", message)
    with pytest.raises(TypeError, match=error):
        await channel_layer.group_send("grp", message)
    assert (await receive_soon(channel_layer, "keep"))["type"] == "before"
    await assert_empty(channel_layer, "keep")


async def test_one_megabyte_messages_round_trip(channel_layer: BaseChannelLayer) -> None:
    blob = random.randbytes(MB)
    text = "é" * MB
    await channel_layer.send("big", {"type": "bytes", "data": blob})
    await channel_layer.send("big", {"type": "text", "data": text})
    assert (await receive_soon(channel_layer, "big"))["data"] == blob
    assert (await receive_soon(channel_layer, "big"))["data"] == text


async def test_message_too_large(layer_factory: LayerFactory) -> None:
    layer = layer_factory(max_message_size="64KB")
    await layer.send("big", {"type": "fits", "data": b"x" * 60_000})
    with pytest.raises(MessageTooLarge, match="max_message_size is 65536"):
        await layer.send("big", {"type": "too.big", "data": b"x" * 70_000})
    with pytest.raises(MessageTooLarge):
        await layer.group_send("grp", {"type": "too.big", "data": b"x" * 70_000})
    assert (await receive_soon(layer, "big"))["type"] == "fits"


# -- stats ------------------------------------------------------------------------------------


async def test_stats_count_what_happened(layer_factory: LayerFactory) -> None:
    layer = layer_factory()
    await layer.send("s1", {"type": "x"})
    await layer.send("s1", {"type": "x"})
    await layer.group_add("sg", "s2")
    await layer.group_send("sg", {"type": "y"})
    await receive_soon(layer, "s1")
    stats = await layer.stats()
    assert stats["sent"] == 3
    assert stats["received"] == 1
    assert stats["group_sends"] == 1
    assert stats["queued"] >= 2
    assert stats["channels"] >= 2
    assert stats["groups"] >= 1
    assert set(stats) >= {"dropped_full", "expired"}
