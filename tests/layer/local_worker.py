"""A process of one simulated host for ``tests/layer/test_local_processes.py``:
``python -m tests.layer.local_worker CONFIG_JSON HOST PROC``.

It makes a ``LocalRedisChannelLayer`` from ``CONFIG_JSON``, says ``{"ready": <its channel>}``,
reads every peer's channel (one JSON line on stdin), then sends: ``DIRECT`` numbered messages to
each peer's channel, a group send to ``GROUP`` after every ``GROUP_EVERY``-th of them, and
``WORK`` items to its host's shared ``work`` channel. It receives until it has every message
meant for it, then takes work until the channel stays quiet, and prints what it got.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
from collections import defaultdict

from layer.exceptions import ChannelFull
from layer.local import LocalRedisChannelLayer

DIRECT, GROUP_EVERY, WORK = 400, 10, 300
GROUP = "everyone"
QUIET = 2.0  # seconds without work before the work channel counts as drained


async def send(layer: LocalRedisChannelLayer, channel: str, message: dict) -> None:
    while True:
        try:
            return await layer.send(channel, message)
        except ChannelFull:
            await asyncio.sleep(0.005)


async def main(config: dict, host: int, proc: int) -> None:
    layer = LocalRedisChannelLayer(**config)
    me = await layer.new_channel("peer")
    await layer.group_add(GROUP, me)
    print(json.dumps({"ready": me}), flush=True)
    peers: list[str] = json.loads(await asyncio.to_thread(sys.stdin.readline))
    others = [p for p in peers if p != me]
    groups = DIRECT // GROUP_EVERY
    expected = len(others) * (DIRECT + groups) + groups  # our own group sends reach us too
    got: defaultdict[str, list[int]] = defaultdict(list)  # sender -> its numbers, in order

    async def receive_mine() -> None:
        for _ in range(expected):
            message = await layer.receive(me)
            got[message["from"]].append(message["i"])

    receiving = asyncio.ensure_future(receive_mine())
    i = 0
    for n in range(DIRECT):
        for peer in others:
            await send(layer, peer, {"type": "direct", "from": me, "i": i})
            i += 1
        if n % GROUP_EVERY == GROUP_EVERY - 1:
            await layer.group_send(GROUP, {"type": "group", "from": me, "i": i})
            i += 1
    for n in range(WORK):
        await send(layer, "work", {"type": "work", "item": [host, proc, n]})
    await asyncio.wait_for(receiving, 120)
    work: list[list[int]] = []
    with contextlib.suppress(TimeoutError):
        while True:
            work.append((await asyncio.wait_for(layer.receive("work"), QUIET))["item"])
    stats = await layer.stats()
    await layer.close()
    print(json.dumps({"me": me, "got": got, "work": work, "stats": stats}), flush=True)


if __name__ == "__main__":
    asyncio.run(main(json.loads(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])))
