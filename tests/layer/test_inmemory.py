"""In-memory specifics: abandoned channels and lapsed members do not accumulate."""

from __future__ import annotations

import asyncio

from layer.inmemory import InMemoryChannelLayer


async def test_unread_expired_channels_are_swept_by_later_sends() -> None:
    layer = InMemoryChannelLayer(expiry=0.1, group_expiry=0.1)
    for i in range(50):
        await layer.send(f"abandoned.{i}", {"type": "x"})
    await layer.group_add("g", "member")
    await asyncio.sleep(0.15)
    await layer.send("fresh", {"type": "y"})
    stats = await layer.stats()
    assert stats == {**stats, "queued": 1, "channels": 1, "groups": 0, "expired": 50}
    assert (await layer.receive("fresh"))["type"] == "y"
    assert (await layer.stats())["channels"] == 0


async def test_a_waiting_receiver_survives_a_sweep_and_a_flush() -> None:
    layer = InMemoryChannelLayer(expiry=0.05)
    waiting = asyncio.ensure_future(layer.receive("waiting"))
    await asyncio.sleep(0.1)
    await layer.send("other", {"type": "sweeps"})
    await layer.flush()
    await layer.send("waiting", {"type": "late"})
    assert (await asyncio.wait_for(waiting, 1))["type"] == "late"
