"""IPC group sends at real sizes: a thousand members, membership changed by another instance,
full members skipped and counted, a full segment."""

from __future__ import annotations

import os
from collections.abc import Callable

import pytest

from layer.exceptions import ChannelFull
from layer.ipc import IPCChannelLayer
from tests.layer.receiving import assert_empty, receive_soon

Factory = Callable[..., IPCChannelLayer]


async def test_group_send_into_a_full_segment_skips_and_recovers(
    ipc_layer_factory: Factory,
) -> None:
    layer = ipc_layer_factory(size="1MB", capacity=100_000)
    for member in ("gf.a", "gf.b"):
        await layer.group_add("gf", member)
    blob = os.urandom(20_000)
    with pytest.raises(ChannelFull):
        while True:
            await layer.send("gf.filler", {"type": "f", "data": blob})
    before = await layer.stats()
    await layer.group_send("gf", {"type": "g", "data": blob})  # no room: both skipped
    after = await layer.stats()
    assert after["queued"] == before["queued"]
    assert after["dropped_full"] == before["dropped_full"] + 2
    for _ in range(before["queued"]):
        assert (await receive_soon(layer, "gf.filler"))["data"] == blob
    await layer.group_send("gf", {"type": "g", "data": blob})
    assert (await receive_soon(layer, "gf.a"))["type"] == "g"
    assert (await receive_soon(layer, "gf.b"))["type"] == "g"


async def test_group_send_to_a_thousand_members(ipc_layer_factory: Factory) -> None:
    layer = ipc_layer_factory()
    members = [await layer.new_channel() for _ in range(1000)]
    for member in members:
        await layer.group_add("big-room", member)
    await layer.group_send("big-room", {"type": "hi"})
    # One inbox entry carries all 1,000 local parts and one copy of the payload (docs/ipc.md
    # "Group sends and process-specific channels").
    assert ((await layer.stats())["queued"], layer.debug_state().queued) == (1, 1)
    for member in members:
        assert (await receive_soon(layer, member))["type"] == "hi"
    assert (await layer.stats())["queued"] == 0


async def test_group_sends_follow_membership_changes_made_by_another_instance(
    ipc_layer_factory: Factory,
) -> None:
    """The sender remembers each member entry's channel: after another instance discards
    members and adds others (whose entries reuse the freed ones), sends reach exactly the new
    members, and members that lapse are dropped, across 2,000 members."""
    sender, owner = (ipc_layer_factory(size="64MB") for _ in range(2))
    first = [await owner.new_channel() for _ in range(2000)]
    for member in first:
        await owner.group_add("room", member)
    await sender.group_send("room", {"type": "a"})
    for member in first[::2]:
        await owner.group_discard("room", member)
    second = [await owner.new_channel() for _ in range(1000)]
    for member in second:
        await owner.group_add("room", member)
    await sender.group_send("room", {"type": "b"})
    kept = first[1::2]
    for member in first[::2]:
        assert (await receive_soon(owner, member))["type"] == "a"
        await assert_empty(owner, member, 0)
    for member in kept:
        assert [(await receive_soon(owner, member))["type"] for _ in range(2)] == ["a", "b"]
    for member in second:
        assert (await receive_soon(owner, member))["type"] == "b"
    assert (await sender.stats())["dropped_full"] == 0
    assert (await owner.stats())["queued"] == 0


async def test_group_send_skips_full_members_and_counts_them(ipc_layer_factory: Factory) -> None:
    """1,000 members, every tenth full: the others get every message, the full ones keep their
    first ``capacity`` and each later message is dropped once per full member, never raised."""
    sender = ipc_layer_factory(capacity=100, channel_capacity={"small.*": 3})
    owner = ipc_layer_factory(capacity=100, channel_capacity={"small.*": 3})
    members = [await owner.new_channel("small" if i % 10 == 0 else "big") for i in range(1000)]
    for member in members:
        await owner.group_add("room", member)
    for i in range(5):
        await sender.group_send("room", {"type": "m", "i": i})
    assert (await sender.stats())["dropped_full"] == 100 * 2
    for member in members:
        want = list(range(3 if member.startswith("small") else 5))
        assert [(await receive_soon(owner, member))["i"] for _ in want] == want
    await assert_empty(owner, members[0], 0)
    await assert_empty(owner, members[1], 0)
