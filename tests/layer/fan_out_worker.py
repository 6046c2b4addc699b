"""One member process of ``tests/layer/test_local_fan_out.py``:
``python -m tests.layer.fan_out_worker CONFIG_JSON MEMBERS SENDS``.

It makes a ``LocalRedisChannelLayer`` from ``CONFIG_JSON``, adds ``MEMBERS`` fresh
process-specific channels to group ``GROUP``, says ``{"ready": true}``, waits (one line on
stdin) until the test has made ``SENDS`` group sends, lets them arrive, and prints where they
wait (``ipc.debug_state()``: the segment's queue, messages held in this process), then receives
``SENDS`` messages on every member and prints each member's numbers and the layer's stats.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys

from layer.local import LocalRedisChannelLayer

GROUP = "fan"
SETTLE = 30.0  # seconds to wait for the sends to arrive


async def main(config: dict, members: int, sends: int) -> None:
    layer = LocalRedisChannelLayer(**config)
    channels = [await layer.new_channel("ws") for _ in range(members)]
    for channel in channels:
        await layer.group_add(GROUP, channel)
    # A receive starts the inbox's bridge (it is cancelled: nothing has been sent yet).
    spare = await layer.new_channel("ws")
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(layer.receive(spare), 0.1)
    print(json.dumps({"ready": True}), flush=True)
    await asyncio.to_thread(sys.stdin.readline)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + SETTLE
    while loop.time() < deadline:
        state = layer.ipc.debug_state()
        if state.queued + sum(state.held.values()) >= members * sends:
            break
        await asyncio.sleep(0.05)
    state = layer.ipc.debug_state()
    where = {"segment": state.queued, "held": sum(state.held.values())}

    async def drain(channel: str) -> list[int]:
        return [(await asyncio.wait_for(layer.receive(channel), 30))["i"] for _ in range(sends)]

    got = await asyncio.gather(*(drain(channel) for channel in channels))
    stats = await layer.stats()
    print(json.dumps({"where": where, "got": got, "stats": stats}), flush=True)
    await layer.close()


if __name__ == "__main__":
    asyncio.run(main(json.loads(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])))
