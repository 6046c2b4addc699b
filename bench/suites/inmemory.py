"""In-memory layer vs Django Channels' ``InMemoryChannelLayer`` (issue: >= 1.25x on each)."""

from __future__ import annotations

import asyncio
from typing import Any

from channels.layers import InMemoryChannelLayer as ChannelsInMemory

from bench.core import Result, SuiteResult, Target, best_rate
from layer.inmemory import InMemoryChannelLayer

OURS, PEER = "layer InMemory", "channels InMemory"
MESSAGE = {"type": "chat.message", "text": "hello world", "n": 1}


async def roundtrip(layer: Any, count: int) -> None:
    for _ in range(count):
        await layer.send("bench.rt", MESSAGE)
        await layer.receive("bench.rt")


async def streamed(layer: Any, count: int) -> None:
    async def produce() -> None:
        for _ in range(count):
            await layer.send("bench.stream", MESSAGE)
            await asyncio.sleep(0) if _ % 64 == 0 else None

    async def consume() -> None:
        for _ in range(count):
            await layer.receive("bench.stream")

    await asyncio.gather(produce(), consume())


async def fan_out(layer: Any, count: int) -> None:
    """``count`` group_sends to 100 members, each member drained (rate = deliveries/s / 100)."""
    members = [f"bench.member.{i}" for i in range(100)]
    for member in members:
        await layer.group_add("bench-fan", member)
    for _ in range(count):
        await layer.group_send("bench-fan", MESSAGE)
        for member in members:
            await layer.receive(member)


def run(quick: bool) -> SuiteResult:
    scale = 1 if quick else 10
    workloads = {
        "roundtrip": (roundtrip, 2_000 * scale, "msg/s"),
        "streamed": (streamed, 2_000 * scale, "msg/s"),
        "fan-out 100": (fan_out, 20 * scale, "deliveries/s"),
    }
    results: list[Result] = []
    for workload, (operation, count, unit) in workloads.items():
        for subject, factory in (
            (OURS, lambda: InMemoryChannelLayer(capacity=1_000_000)),
            (PEER, lambda: ChannelsInMemory(capacity=1_000_000)),
        ):
            layer = factory()
            rate = asyncio.run(best_rate(lambda n, layer=layer, op=operation: op(layer, n), count))
            if workload.startswith("fan-out"):
                rate *= 100
            results.append(Result(workload, subject, rate, unit))
    return SuiteResult(
        name="inmemory",
        title="In-memory layer (one process)",
        results=results,
        targets=[Target(w, OURS, PEER, 1.25) for w in workloads],
        notes="Peer: `channels.layers.InMemoryChannelLayer` (Django Channels "
        f"{__import__('channels').__version__}). Message: `{MESSAGE}`.",
    )
