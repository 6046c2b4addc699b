"""The channel layer contract, written once and run against every backend in ``BACKENDS``."""

from __future__ import annotations

import asyncio
import contextlib
import random
import re

import pytest
from channels.exceptions import ChannelFull as ChannelsChannelFull

from layer.base import BaseChannelLayer
from layer.exceptions import ChannelFull, InvalidName, MessageTooLarge, NotOwnChannel
from tests.layer.conftest import LayerFactory

MB = 1024 * 1024


async def receive_soon(layer: BaseChannelLayer, channel: str, wait: float = 2.0) -> dict:
    return await asyncio.wait_for(layer.receive(channel), wait)


async def assert_empty(layer: BaseChannelLayer, channel: str, wait: float = 0.1) -> None:
    with pytest.raises(asyncio.TimeoutError):
        await asyncio.wait_for(layer.receive(channel), wait)


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


# -- groups -----------------------------------------------------------------------------------


async def test_groups_basic(channel_layer: BaseChannelLayer) -> None:
    await channel_layer.group_add("grp", "c1")
    await channel_layer.group_add("grp", "c2")
    await channel_layer.group_add("grp", "c3")
    await channel_layer.group_discard("grp", "c2")
    await channel_layer.group_send("grp", {"type": "hi"})
    assert (await receive_soon(channel_layer, "c1"))["type"] == "hi"
    assert (await receive_soon(channel_layer, "c3"))["type"] == "hi"
    await assert_empty(channel_layer, "c2")


async def test_group_add_is_idempotent_and_discard_of_unknown_is_quiet(
    channel_layer: BaseChannelLayer,
) -> None:
    await channel_layer.group_add("idem", "c")
    await channel_layer.group_add("idem", "c")
    await channel_layer.group_discard("idem", "nobody")
    await channel_layer.group_discard("no-such-group", "c")
    await channel_layer.group_send("idem", {"type": "once"})
    assert (await receive_soon(channel_layer, "c"))["type"] == "once"
    await assert_empty(channel_layer, "c")


async def test_group_send_to_empty_or_unknown_group_is_quiet(
    channel_layer: BaseChannelLayer,
) -> None:
    await channel_layer.group_send("nobody-here", {"type": "x"})


async def test_group_send_skips_full_members_without_raising(layer_factory: LayerFactory) -> None:
    layer = layer_factory(capacity=1)
    await layer.group_add("g", "full")
    await layer.group_add("g", "free")
    await layer.send("full", {"type": "filler"})
    await layer.group_send("g", {"type": "broadcast"})
    assert (await receive_soon(layer, "free"))["type"] == "broadcast"
    assert (await receive_soon(layer, "full"))["type"] == "filler"
    await assert_empty(layer, "full")
    assert (await layer.stats())["dropped_full"] >= 1


async def test_group_send_to_process_specific_members(channel_layer: BaseChannelLayer) -> None:
    members = [await channel_layer.new_channel() for _ in range(5)]
    for member in members:
        await channel_layer.group_add("room", member)
    await channel_layer.group_send("room", {"type": "chat", "text": "hi"})
    for member in members:
        assert (await receive_soon(channel_layer, member))["text"] == "hi"


async def test_group_members_each_own_their_message(channel_layer: BaseChannelLayer) -> None:
    """Members in one process may be served from one stored copy; what a receiver does to
    its message (top level or nested) must not show in another member's."""
    members = [await channel_layer.new_channel() for _ in range(3)]
    for member in members:
        await channel_layer.group_add("own", member)
    await channel_layer.group_send("own", {"type": "flat", "n": 1})
    await channel_layer.group_send("own", {"type": "nested", "items": [1], "meta": {"k": "v"}})
    first = [await receive_soon(channel_layer, member) for member in members]
    first[0]["n"] = 99
    assert [message["n"] for message in first] == [99, 1, 1]
    second = [await receive_soon(channel_layer, member) for member in members]
    second[0]["items"].append(2)
    second[0]["meta"]["k"] = "changed"
    second[1]["type"] = "changed"
    assert second[2] == {"type": "nested", "items": [1], "meta": {"k": "v"}}
    assert second[1]["items"] == [1] and second[1]["meta"] == {"k": "v"}


async def test_group_fan_out_to_many_members(channel_layer: BaseChannelLayer) -> None:
    members = [f"fan.{i}" for i in range(100)]
    for member in members:
        await channel_layer.group_add("fan", member)
    await channel_layer.group_send("fan", {"type": "x"})
    for member in members:
        assert (await receive_soon(channel_layer, member))["type"] == "x"


# -- flush ------------------------------------------------------------------------------------


async def test_flush_empties_channels_and_groups(channel_layer: BaseChannelLayer) -> None:
    await channel_layer.send("f1", {"type": "x"})
    await channel_layer.group_add("fg", "f2")
    await channel_layer.flush()
    await channel_layer.group_send("fg", {"type": "y"})
    await assert_empty(channel_layer, "f1")
    await assert_empty(channel_layer, "f2")
    await channel_layer.send("f1", {"type": "after"})  # usable after a flush
    assert (await receive_soon(channel_layer, "f1"))["type"] == "after"


# -- names ------------------------------------------------------------------------------------

VALID_CHANNELS = ["a", "a.b-c_d", "x" * 99, "http.response!abc", "a!", "q?abc", "a.b?c!d", "a!b?"]
INVALID_CHANNELS = [
    ("x" * 100, "fewer than 100"),
    ("", "empty"),
    ("héllo", "contains"),
    ("sp ace", "contains"),
    ("a!b!c", "more than one '!'"),
    ("a?b?c", "more than one '?'"),
    ("!abc", "start with"),
    (123, "must be a str"),
    (None, "must be a str"),
]


@pytest.mark.parametrize("name", VALID_CHANNELS)
async def test_valid_channel_names(channel_layer: BaseChannelLayer, name: str) -> None:
    if channel_layer.cross_process:  # a process-specific one of this client, to receive on
        name = name.replace("!", f"{channel_layer.client_id}!")
    assert channel_layer.valid_channel_name(name)
    await channel_layer.send(name, {"type": "ok"})
    assert (await receive_soon(channel_layer, name))["type"] == "ok"


@pytest.mark.parametrize(("name", "rule"), INVALID_CHANNELS)
async def test_invalid_channel_names(channel_layer: BaseChannelLayer, name, rule) -> None:
    for call in (
        lambda: channel_layer.send(name, {"type": "x"}),
        lambda: channel_layer.receive(name),
        lambda: channel_layer.group_add("g", name),
    ):
        with pytest.raises(InvalidName, match=re.escape(rule)) as info:
            await call()
        assert isinstance(info.value, TypeError)
    with pytest.raises(TypeError):
        channel_layer.valid_channel_name(name)


@pytest.mark.parametrize("name", ["g!x", "g?x", "x" * 100, "", "gr oup", 7])
async def test_invalid_group_names(channel_layer: BaseChannelLayer, name) -> None:
    with pytest.raises(InvalidName):
        await channel_layer.group_add(name, "c")
    with pytest.raises(InvalidName):
        await channel_layer.group_send(name, {"type": "x"})
    with pytest.raises(InvalidName):
        await channel_layer.group_discard(name, "c")


async def test_group_name_length_boundary(channel_layer: BaseChannelLayer) -> None:
    await channel_layer.group_add("g" * 99, "c")
    await channel_layer.group_send("g" * 99, {"type": "x"})
    assert (await receive_soon(channel_layer, "c"))["type"] == "x"


def test_name_helpers(channel_layer: BaseChannelLayer) -> None:
    assert channel_layer.non_local_name("a.b!xyz") == "a.b!"
    assert channel_layer.non_local_name("a.b") == "a.b"
    assert channel_layer.valid_channel_names(["a", "b!c"])
    with pytest.raises(TypeError):
        channel_layer.valid_channel_names("abc")


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
