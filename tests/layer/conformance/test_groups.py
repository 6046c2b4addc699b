"""Groups: membership, fan-out, full members skipped without raising, and flush."""

from __future__ import annotations

from layer.base import BaseChannelLayer
from tests.layer.conftest import LayerFactory
from tests.layer.receiving import assert_empty, receive_soon

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
