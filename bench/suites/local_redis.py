"""Local + Redis layer vs pure IPC and pure Redis (three shards), same servers, same run.

Two simulated hosts are two IPC prefixes sharing the shards. Every workload crosses processes.
"echo roundtrip" answers whether a process-specific channel of this host is worth routing over
IPC (docs/layer.md, "Local + Redis"): on one host both hops go over IPC, across two hosts both
go over Redis, as they would if such channels always went to Redis.
"""

from __future__ import annotations

import asyncio
import multiprocessing as mp
import time
import uuid
from collections.abc import Callable
from multiprocessing.synchronize import Event
from typing import Any

from bench.core import Result, SuiteResult, Target
from harness.redis_server import RedisServer
from layer.base import BaseChannelLayer
from layer.ipc.segment import unlink

LOCAL1, LOCAL2 = "local+Redis, one host", "local+Redis, two hosts"
IPC, REDIS3 = "layer IPC (one host)", "layer Redis (3 shards)"
SUBJECTS = (LOCAL1, LOCAL2, IPC, REDIS3)
MESSAGE = {"type": "chat.message", "text": "hello world", "n": 1}
CAPACITY = 1_000_000
MEMBERS = 100  # group members, half in each of two consumer processes
IDLE = 5.0


def make_layer(subject: str, urls: list[str], prefixes: list[str], host: int) -> BaseChannelLayer:
    """``subject``'s layer for a process on simulated ``host`` (0 or 1)."""
    if subject == REDIS3:
        from layer.redis import RedisChannelLayer

        return RedisChannelLayer(hosts=urls, capacity=CAPACITY)
    if subject == IPC:
        from layer.ipc import IPCChannelLayer

        return IPCChannelLayer(prefix=prefixes[0], size="64MB", capacity=CAPACITY)
    from layer.local import LocalRedisChannelLayer

    here = prefixes[host if subject == LOCAL2 else 0]
    return LocalRedisChannelLayer(
        ipc={"prefix": here, "size": "64MB"}, redis={"hosts": urls}, capacity=CAPACITY
    )


def _echo(subject: str, urls: list[str], prefixes: list[str], out: Any, stop: Event) -> None:
    async def main() -> None:
        layer = make_layer(subject, urls, prefixes, 1)
        me = await layer.new_channel("echo")
        out.put(me)
        while not stop.is_set():
            try:
                message = await asyncio.wait_for(layer.receive(me), 0.5)
            except TimeoutError:
                continue
            await layer.send(message["reply"], MESSAGE)
        await layer.close()

    asyncio.run(main())


def _roundtrip(subject: str, urls: list[str], prefixes: list[str], count: int) -> float:
    ctx = mp.get_context("spawn")
    out, stop = ctx.Queue(), ctx.Event()
    echo = ctx.Process(target=_echo, args=(subject, urls, prefixes, out, stop))
    echo.start()
    try:
        peer = out.get(timeout=60)

        async def main() -> float:
            layer = make_layer(subject, urls, prefixes, 0)
            reply = await layer.new_channel("client")
            request = {**MESSAGE, "reply": reply}
            for _ in range(count // 10):  # warm-up
                await layer.send(peer, request)
                await layer.receive(reply)
            started = time.perf_counter()
            for _ in range(count):
                await layer.send(peer, request)
                await layer.receive(reply)
            rate = count / (time.perf_counter() - started)
            await layer.close()
            return rate

        return asyncio.run(main())
    finally:
        stop.set()
        echo.join(10)
        if echo.is_alive():
            echo.kill()


def _members(
    subject: str,
    urls: list[str],
    prefixes: list[str],
    host: int,
    count: int,
    ready: Event,
    out: Any,
) -> None:
    """Half of the group's members on ``host``; report (first, last, received)."""

    async def main() -> None:
        layer = make_layer(subject, urls, prefixes, host)
        channels = [await layer.new_channel() for _ in range(MEMBERS // 2)]
        for channel in channels:
            await layer.group_add("bench-fan", channel)
        stamps: list[float] = []

        async def drain(channel: str) -> None:
            for _ in range(count):
                await layer.receive(channel)
                stamps.append(time.time())

        tasks = [asyncio.ensure_future(drain(c)) for c in channels]
        await asyncio.sleep(0.5)
        ready.set()
        seen = -1
        while len(stamps) != seen and not all(t.done() for t in tasks):
            seen = len(stamps)
            await asyncio.wait(tasks, timeout=IDLE)
        for task in tasks:
            task.cancel()
        out.put((min(stamps, default=0.0), max(stamps, default=0.0), len(stamps)))
        await layer.close()

    asyncio.run(main())


def _fan_out(subject: str, urls: list[str], prefixes: list[str], count: int) -> float:
    """Deliveries per second: ``count`` group sends from host 0 to members on both hosts."""
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    readies = [ctx.Event() for _ in range(2)]
    members = [
        ctx.Process(target=_members, args=(subject, urls, prefixes, h, count, readies[h], out))
        for h in range(2)
    ]
    for process in members:
        process.start()
    try:
        for ready in readies:
            if not ready.wait(60):
                raise RuntimeError(f"{subject} members did not start")

        async def main() -> float:
            layer = make_layer(subject, urls, prefixes, 0)
            started = time.time()
            for _ in range(count):
                await layer.group_send("bench-fan", MESSAGE)
            reports = [await asyncio.to_thread(out.get) for _ in members]
            await layer.close()
            got = sum(r[2] for r in reports)
            return got / (max(r[1] for r in reports) - started) if got else 0.0

        return asyncio.run(main())
    finally:
        for process in members:
            process.join(30)
            if process.is_alive():
                process.kill()


def _broadcast(subject: str, urls: list[str], prefixes: list[str], count: int) -> float:
    """Deliveries per second: ``count`` group sends from host 0, one at a time (the next when
    every member has the last: a chat room's broadcasts), to ``MEMBERS // 2`` members on host 1
    in one process (the sender's, so the rate is the CPU both sides cost per delivery)."""

    async def main() -> float:
        sender, there = (make_layer(subject, urls, prefixes, host) for host in (0, 1))
        channels = [await there.new_channel() for _ in range(MEMBERS // 2)]
        for channel in channels:
            await there.group_add("bench-room", channel)
        received, reached = [0, 0], asyncio.Event()  # [deliveries, how many reach the room]

        async def drain(channel: str) -> None:
            while True:
                await there.receive(channel)
                received[0] += 1
                if received[0] == received[1]:
                    reached.set()

        tasks = [asyncio.ensure_future(drain(channel)) for channel in channels]
        started = 0.0
        for sent in range(count // 10 + count):  # a tenth as warm-up
            if sent == count // 10:
                started = time.perf_counter()
            received[1] = (sent + 1) * len(channels)
            reached.clear()
            await sender.group_send("bench-room", MESSAGE)
            await reached.wait()
        rate = count * len(channels) / (time.perf_counter() - started)
        for task in tasks:
            task.cancel()
        await sender.close()
        await there.close()
        return rate

    return asyncio.run(main())


def _fresh(
    servers: list[RedisServer], measure: Callable[[str, list[str]], float], subject: str
) -> float:
    """One measurement on flushed servers and new IPC prefixes, removed afterwards."""
    for server in servers:
        with server.client() as client:
            client.flushall()
    prefixes = [f"b{uuid.uuid4().hex[:8]}" for _ in range(2)]
    try:
        return measure(subject, prefixes)
    finally:
        for prefix in prefixes:
            unlink(prefix)


def run(quick: bool) -> SuiteResult:
    scale = 1 if quick else 5
    rounds = 1 if quick else 3
    servers = [RedisServer().start() for _ in range(3)]
    urls = [server.url for server in servers]
    workloads: dict[str, tuple[Callable[[str, list[str]], float], str]] = {
        "echo roundtrip (2 processes)": (
            lambda s, p: _roundtrip(s, urls, p, 600 * scale),
            "roundtrips/s",
        ),
        "fan-out 100 (2 processes)": (
            lambda s, p: _fan_out(s, urls, p, 100 * scale),
            "deliveries/s",
        ),
        f"broadcast to {MEMBERS // 2} on host 1": (
            lambda s, p: _broadcast(s, urls, p, 100 * scale),
            "deliveries/s",
        ),
    }
    results: list[Result] = []
    try:
        for workload, (measure, unit) in workloads.items():
            best = dict.fromkeys(SUBJECTS, 0.0)
            for _ in range(rounds):  # interleaved: a disturbance hits one subject's round
                for subject in SUBJECTS:
                    best[subject] = max(best[subject], _fresh(servers, measure, subject))
            results.extend(Result(workload, subject, best[subject], unit) for subject in SUBJECTS)
    finally:
        for server in servers:
            server.stop()
    targets = [
        Target("fan-out 100 (2 processes)", LOCAL2, REDIS3, 1.0),
        Target("echo roundtrip (2 processes)", LOCAL1, REDIS3, 1.3),
    ]
    return SuiteResult(
        name="local_redis",
        title="Local + Redis layer vs IPC and Redis (two simulated hosts, three shards)",
        results=results,
        targets=targets,
        notes=(
            "Two simulated hosts are two IPC prefixes on this machine sharing three local "
            "redis-servers. echo roundtrip: the suite's process sends to an echo process's "
            "process-specific channel and awaits the reply on its own; one host: both hops "
            "over IPC (the reply channel is this host's), two hosts: both over Redis (what "
            "every reply would cost if process-specific channels always went to Redis). "
            f"fan-out: {100 * scale:,} group_sends from host 0 to {MEMBERS} process-specific "
            "members, half in a process on host 0 and half in one on host 1 (IPC: both on "
            "its one host; Redis: both on the shards), deliveries per second from the first "
            f"send to the last receive. broadcast: {100 * scale:,} group_sends from host 0, "
            f"each when the last has reached all {MEMBERS // 2} members on host 1 (IPC: the "
            "one host; Redis: the shards), sender and members in one process: the CPU a "
            "delivery to another host costs both sides, as a chat room's broadcasts do. "
            f"Best of {rounds} interleaved round(s). capacity "
            f"{CAPACITY:,}."
        ),
    )
