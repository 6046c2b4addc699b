"""Several threads' event loops receiving on one layer at once, for the layer's tests: what
threaded WSGI Django (a request per thread, ``async_to_sync`` per call) and thread-pool workers
do. Each reader thread owns some process-specific channels of ``owner`` and receives on them in
turns, in its own way (:data:`KINDS`), while ``remote`` (another process, simulated) streams to
all of them, directly and through a group."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import itertools
import random
import threading
import time
from dataclasses import dataclass
from typing import Any

from asgiref.sync import async_to_sync

from layer.base import BaseChannelLayer

# How a reader thread receives:
#   short: each receive in a fresh loop (async_to_sync) with a 3 ms timeout;
#   batch: a fresh loop per call that receives up to 8 in a row (it keeps receiving: bulk pops);
#   close: as short, then close() in that loop (channels_redis's close_pools() after a request);
#   long:  one loop for the thread's whole life, receives with 2-30 ms timeouts; the loop
#          lives until every other reader is done (a thread-pool worker's loop outlives the
#          requests around it). Without one, fresh loops shorter than a connect get nothing
#          once no connected loop is left: a known limit of the Redis layer (docs/redis.md).
KINDS = ("short", "batch", "close", "long")
QUIET = 3.0  # seconds without a message, once the sender is done, after which a reader gives up


@dataclass(frozen=True)
class Reader:
    kind: str
    channels: int


@dataclass
class Outcome:
    """What each channel got: ``("i", n)`` sent to it directly, ``("g", n)`` through the group."""

    channels: list[str]
    got: dict[str, list[tuple[str, int]]]
    direct: int
    grouped: int
    late: list[str]  # channels that got something after they were complete (twice, or extra)

    def problems(self) -> list[str]:
        """Per channel: anything twice, out of the sender's order, or missing."""
        found = []
        for channel in self.channels:
            got = self.got[channel]
            twice = [m for m, n in collections.Counter(got).items() if n > 1]
            for kind, total in (("i", self.direct), ("g", self.grouped)):
                seq = [n for k, n in got if k == kind]
                swaps = sum(1 for a, b in itertools.pairwise(seq) if b < a)
                missing = sorted(set(range(total)) - set(seq))
                if twice or swaps or missing:
                    found.append(f"{channel} {kind}: {swaps} out of order, twice {twice[:5]}, "
                                 f"{len(missing)} missing {missing[:5]}")  # fmt: skip
        return found + [f"{c}: more after it was complete" for c in self.late]


async def _take(layer: BaseChannelLayer, channel: str, wait: float) -> dict[str, Any] | None:
    with contextlib.suppress(TimeoutError):
        return await asyncio.wait_for(layer.receive(channel), wait)
    return None


async def _take_some(layer: BaseChannelLayer, channel: str) -> list[dict[str, Any]]:
    got = []
    while len(got) < 8 and (message := await _take(layer, channel, 0.01)) is not None:
        got.append(message)
    return got


async def _take_then_close(layer: BaseChannelLayer, channel: str) -> dict[str, Any] | None:
    try:
        return await _take(layer, channel, 0.003)
    finally:
        await layer.close()


def received_by_threads(
    owner: BaseChannelLayer,
    remote: BaseChannelLayer,
    readers: list[Reader],
    direct: int,
    grouped: int = 0,
    seed: int = 0,
) -> Outcome:
    """Run ``readers`` while ``remote`` sends ``direct`` numbered messages to each of their
    channels and ``grouped`` to a group of all of them; then check nothing more comes."""
    owned = [
        [async_to_sync(owner.new_channel)("reply") for _ in range(r.channels)] for r in readers
    ]
    channels = [c for mine in owned for c in mine]
    group = f"g{random.Random(seed).randrange(10**9)}"
    for channel in channels:
        async_to_sync(owner.group_add)(group, channel)
    got: dict[str, list[tuple[str, int]]] = {c: [] for c in channels}
    expected = direct + grouped
    sent = threading.Event()

    def record(channel: str, message: dict[str, Any] | None) -> None:
        if message is not None:
            got[channel].append(("g", message["g"]) if "g" in message else ("i", message["i"]))

    def read(reader: Reader, mine: list[str], rng: random.Random) -> None:
        quiet_since = None
        turn = itertools.cycle(mine)
        while True:
            open_ = [c for c in mine if len(got[c]) < expected]
            if not open_:
                return
            channel = next(turn)
            if channel not in open_:
                continue
            before = sum(len(got[c]) for c in mine)
            if reader.kind == "short":
                record(channel, async_to_sync(_take)(owner, channel, 0.003))
            elif reader.kind == "close":
                record(channel, async_to_sync(_take_then_close)(owner, channel))
            else:
                for message in async_to_sync(_take_some)(owner, channel):
                    record(channel, message)
            if sum(len(got[c]) for c in mine) > before or not sent.is_set():
                quiet_since = None
            elif quiet_since is None:
                quiet_since = time.monotonic()
            elif time.monotonic() - quiet_since > QUIET:
                return

    def read_in_one_loop(mine: list[str], rng: random.Random) -> None:
        async def main() -> None:
            await receive_all()
            await asyncio.to_thread(others_done.wait, 120)  # idle, running, connected

        async def receive_all() -> None:
            quiet_since = None
            for channel in itertools.cycle(mine):
                if all(len(got[c]) >= expected for c in mine):
                    return
                if len(got[channel]) >= expected:
                    continue
                message = await _take(owner, channel, rng.uniform(0.002, 0.03))
                record(channel, message)
                if message is not None or not sent.is_set():
                    quiet_since = None
                elif quiet_since is None:
                    quiet_since = time.monotonic()
                elif time.monotonic() - quiet_since > QUIET:
                    return

        asyncio.run(main())

    async def send_all() -> None:
        rng = random.Random(seed)
        g = 0
        for i in range(direct):
            for channel in channels:
                await remote.send(channel, {"type": "r", "i": i})
            if grouped and g < grouped and rng.random() < grouped / direct:
                await remote.group_send(group, {"type": "r", "g": g})
                g += 1
            await asyncio.sleep(0.001 if i % 3 else 0.004)
        for n in range(g, grouped):
            await remote.group_send(group, {"type": "r", "g": n})

    threads = [
        threading.Thread(
            target=read_in_one_loop if reader.kind == "long" else read,
            args=(() if reader.kind == "long" else (reader,)) + (mine, random.Random(seed + k)),
        )
        for k, (reader, mine) in enumerate(zip(readers, owned, strict=True))
    ]
    others_done = threading.Event()
    for thread in threads:
        thread.start()
    try:
        async_to_sync(send_all)()
    finally:
        sent.set()
        longs = [t for t, r in zip(threads, readers, strict=True) if r.kind == "long"]
        for thread in threads:
            if thread not in longs:
                thread.join(60)
        others_done.set()
        for thread in longs:
            thread.join(60)
    late = [c for c in channels if async_to_sync(_take)(owner, c, 0.05) is not None]
    return Outcome(channels, got, direct, grouped, late)
