"""The volume roles, ``python -m tests.layer.ipc.volume_roles ROLE PREFIX OPTIONS [ARGS...]``
(``tests/layer/volume.py``, run by ``ipc/test_volume.py`` and ``redis/test_volume.py``).

The same roles drive either backend: their first argument is the layer's options as JSON, with
``"backend": "redis"`` for a RedisChannelLayer (an IPCChannelLayer otherwise). Results are
reported after ``close()``, so messages that expired while being sent back are counted too.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import sys
import time
from typing import Any

from layer.base import BaseChannelLayer
from layer.exceptions import ChannelFull
from layer.ipc import IPCChannelLayer
from layer.ipc.receivers import SPIN
from tests.layer.ipc.worker import SIZE, say


def make_layer(prefix: str, **options: Any) -> BaseChannelLayer:
    spec = dict(options)
    if spec.pop("backend", "ipc") == "redis":
        from layer.redis import RedisChannelLayer

        return RedisChannelLayer(prefix=prefix, **spec)
    spec.setdefault("spin", float(os.environ.get("IPC_TEST_SPIN", SPIN)))
    return IPCChannelLayer(prefix=prefix, **{"size": SIZE, "capacity": 10_000, **spec})


async def sending(layer: BaseChannelLayer, channel: str, message: dict) -> int:
    """``send_retrying`` for any backend; returns how many tries ChannelFull refused."""
    refused = 0
    while True:
        try:
            await layer.send(channel, message)
            return refused
        except ChannelFull:
            refused += 1
            await asyncio.sleep(0.002)


def lost_full(layer: BaseChannelLayer, refused: int) -> int:
    """Messages dropped for want of room after their send returned (a held send that no
    longer fitted, a full group member skipped, a message sent back that no longer fitted):
    ``dropped_full`` without the sends refused (and retried)."""
    return layer.counters.dropped_full - refused


async def volume(role: str, prefix: str, args: list[str]) -> None:
    options = json.loads(args[0])
    layer = make_layer(prefix, **options)
    report: dict[str, Any] = {}
    try:
        if role == "v-produce":
            fin = make_layer(prefix, **{**options, "expiry": 60})
            report = await v_produce(layer, fin, *map(int, args[1:]))
        elif role == "v-consume":
            report = await v_consume(layer, int(args[1]), float(args[2]), float(args[3]))
        elif role == "v-members":
            report = await v_members(layer, int(args[1]), int(args[2]))
        elif role == "v-gsend":
            report = await v_gsend(layer, int(args[1]), int(args[2]), args[3].split(","))
        elif role == "v-churn":
            report = await v_churn(layer, int(args[1]), int(args[2]))
        await layer.stats()  # with Redis: every pipelined reply is in (and its counts booked)
    finally:
        await layer.close()
    expired = layer.counters.expired + report.pop("fin_expired", 0)
    say({**report, "expired": expired, "lost_full": lost_full(layer, report.pop("refused", 0))})


async def v_produce(
    layer: BaseChannelLayer, fin: BaseChannelLayer, me: int, count: int, group_every: int
) -> dict[str, Any]:
    """``count`` messages to ``v.work``, every ``group_every``-th also to group ``v.all``; then
    a ``fin`` to both through a layer whose messages do not expire in the test (with Redis its
    send renews the list's TTL, so expired entries left at the end are popped and counted
    rather than vanishing with the key)."""
    refused = groups = 0
    for i in range(count):
        refused += await sending(layer, "v.work", {"type": "w", "p": me, "i": i})
        if i % group_every == 0:
            await layer.group_send("v.all", {"type": "g", "p": me, "i": i})
            groups += 1
    await sending(fin, "v.work", {"type": "fin", "p": me})
    await fin.group_send("v.all", {"type": "fin", "p": me})
    await fin.stats()
    await fin.close()
    fin_expired = fin.counters.expired  # a push into a full channel drops its expired heads
    return {"sent": count, "group_sends": groups, "refused": refused, "fin_expired": fin_expired}


async def v_consume(layer: BaseChannelLayer, me: int, period: float, pause: float) -> dict:
    """Receive ``v.work`` until ``stop`` and this consumer's ``v.all`` messages until ``stop``,
    both pausing for the first ``pause`` seconds of every ``period`` (by the wall clock, so every
    consumer pauses at once and messages expire in the queue meanwhile)."""
    own = f"v.consumer.{me}"
    await layer.group_add("v.all", own)
    say("ready")
    got: dict[str, list[tuple[int, int]]] = {"v.work": [], own: []}
    fins = 0

    async def loop(channel: str) -> None:
        nonlocal fins
        while True:
            into = time.time() % period
            if into < pause:
                await asyncio.sleep(pause - into)
            message = await layer.receive(channel)
            if message["type"] == "stop":
                return
            if message["type"] == "fin":
                fins += 1
            else:
                got[channel].append((message["p"], message["i"]))

    await asyncio.gather(loop("v.work"), loop(own))
    await layer.group_discard("v.all", own)
    return {"work": got["v.work"], "group": got[own], "fins": fins}


def members_of(me: int, many: int) -> list[str]:
    return [f"vb.{me}.{k}" for k in range(many)]


async def v_members(layer: BaseChannelLayer, me: int, many: int) -> dict:
    """``many`` channels, each a member of ``vb.big`` and of its own group ``vb.solo.<name>``;
    each receives (all at once) until ``end``. Reports, per channel, the ``vb.big`` messages as
    ``[p, i]`` and the producers whose ``solo`` message came."""
    channels = members_of(me, many)
    for channel in channels:
        await layer.group_add("vb.big", channel)
        await layer.group_add(f"vb.solo.{channel}", channel)
    say("ready")
    big: dict[str, list[tuple[int, int]]] = {c: [] for c in channels}
    solo: dict[str, list[int]] = {c: [] for c in channels}

    async def loop(channel: str) -> None:
        while (message := await layer.receive(channel))["type"] != "end":
            if message["type"] == "solo":
                solo[channel].append(message["p"])
            else:
                big[channel].append((message["p"], message["i"]))

    await asyncio.gather(*map(loop, channels))
    return {"big": big, "solo": solo}


async def v_gsend(layer: BaseChannelLayer, me: int, count: int, members: list[str]) -> dict:
    """``count`` group sends to ``vb.big``, then one to the ``vb.solo`` group of each member in
    ``members`` (``C:M``: member process C's M channels)."""
    for i in range(count):
        await layer.group_send("vb.big", {"type": "b", "p": me, "i": i})
    for spec in filter(None, members):
        c, m = map(int, spec.split(":"))
        for channel in members_of(c, m):
            await layer.group_send(f"vb.solo.{channel}", {"type": "solo", "p": me})
    return {"group_sends": count}


async def v_churn(layer: BaseChannelLayer, me: int, ops: int) -> dict:
    """``ops`` random group_add / group_discard / group_send over this process's 500 groups
    ``vc.<me>.<g>`` and 8 channels, against a model of who is a member when; its channels also
    join and leave the shared ``vb.big`` while others send to it. At the end every channel must
    have received exactly the model's messages, in order, and ``vb.big``'s without duplicates
    and in each sender's order. Reports the memberships it left."""
    rng = random.Random(me)
    groups = [f"vc.{me}.{g}" for g in range(500)]
    channels = [f"vc.{me}.ch{m}" for m in range(8)]
    members: dict[str, set[str]] = {g: set() for g in groups}
    expected: dict[str, list[int]] = {c: [] for c in channels}
    in_big: set[str] = set()
    for seq in range(ops):
        group, channel, roll = rng.choice(groups), rng.choice(channels), rng.random()
        if roll < 0.45:
            await layer.group_add(group, channel)
            members[group].add(channel)
        elif roll < 0.75:
            await layer.group_discard(group, channel)
            members[group].discard(channel)
        elif roll < 0.95:
            await layer.group_send(group, {"type": "c", "s": seq})
            for member in members[group]:
                expected[member].append(seq)
        elif channel in in_big:
            await layer.group_discard("vb.big", channel)
            in_big.discard(channel)
        else:
            await layer.group_add("vb.big", channel)
            in_big.add(channel)
    for channel in channels:
        await layer.group_discard("vb.big", channel)
        await layer.send(channel, {"type": "end"})
    problems: list[str] = []
    for channel in channels:
        mine: list[int] = []
        big: list[tuple[int, int]] = []
        while (message := await layer.receive(channel))["type"] != "end":
            if message["type"] == "c":
                mine.append(message["s"])
            else:
                big.append((message["p"], message["i"]))
        if mine != expected[channel]:
            problems.append(
                f"{channel} got {len(mine)} group messages, the model {len(expected[channel])}"
            )
        if len(set(big)) != len(big) or any(
            [i for q, i in big if q == p] != sorted(i for q, i in big if q == p) for p, _ in big
        ):
            problems.append(f"{channel}'s vb.big messages are duplicated or out of order")
    left = {g: sorted(m) for g, m in members.items() if m}
    return {"problems": problems, "groups": left}


if __name__ == "__main__":
    asyncio.run(volume(sys.argv[1], sys.argv[2], sys.argv[3:]))
