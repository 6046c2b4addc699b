"""Attacks on the Local + Redis bridge (layer/local/bridge.py): streams from another host
received while they arrive, cancellations at the hand-over, forged inbox entries, a Redis
shard restarted under a draining bridge, close() with bridges running."""

from __future__ import annotations

import asyncio
import contextlib

from tests.layer.local_fixtures import LocalFactory

N = 3000


async def test_a_stream_from_another_host_is_received_in_order_while_it_arrives(
    local_redis_layer_factory: LocalFactory,
) -> None:
    """One remote sender streams to a reply channel that a consumer receives from in a loop:
    the bridge hands some messages straight to the waiting receive and pushes the rest into
    IPC; the consumer must still see the sender's order (FIFO per channel)."""
    owner = local_redis_layer_factory(capacity=N)
    remote = local_redis_layer_factory(host=1, capacity=N)
    reply = await owner.new_channel("reply")

    async def send() -> None:
        for i in range(N):
            await remote.send(reply, {"type": "r", "i": i})
            if i % 7 == 0:
                await asyncio.sleep(0)

    sender = asyncio.ensure_future(send())
    got = [(await asyncio.wait_for(owner.receive(reply), 10))["i"] for _ in range(N)]
    await sender
    out_of_order = [(a, b) for a, b in zip(got, got[1:], strict=False) if b != a + 1]
    assert out_of_order == [], f"{len(out_of_order)} inversions, first: {out_of_order[:5]}"
    assert sorted(got) == list(range(N))
