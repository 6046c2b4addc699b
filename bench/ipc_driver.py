"""One side of a cross-process IPC benchmark: ``python -m bench.ipc_driver ROLE PREFIX N [DEPTH
[SIZE]]``.

``PREFIX`` is the IPC layer's prefix, or a ``redis://`` URL to run the same roles over our Redis
layer (the suite's same-run baseline for issue 4's "2x our Redis layer" target).

Roles: ``echo``/``ping`` (roundtrip), ``produce``/``consume`` (streamed), ``solo`` (send then
receive in one process, how the issue quoted ``asgi_ipc``), ``idle`` (CPU while a receive
waits). Each prints ``ready`` once attached (and prefilled), waits for ``go`` on stdin, and the
timing side prints one JSON line with its result. With ``SIZE``, the message is
``{"type": "bench.sized", "body": <SIZE bytes>}`` instead of the small chat message.

Every role first applies the glibc malloc settings the kit's services start with
(``services.memory``), on both backends: without them a process that receives megabyte
messages faults each one's pages in afresh (~700 µs of a 1 MiB receive's ~900 µs).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
import time
from typing import Any

from layer.exceptions import ChannelFull
from layer.ipc import IPCChannelLayer
from services.memory import keep_freed_memory

MESSAGE = {"type": "chat.message", "text": "hello world", "n": 1}


def handshake() -> None:
    print("ready", flush=True)
    sys.stdin.readline()


def make_layer(prefix: str) -> Any:
    if prefix.startswith("redis://"):
        from layer.redis import RedisChannelLayer

        return RedisChannelLayer(hosts=[prefix], capacity=1_000_000)
    return IPCChannelLayer(prefix=prefix, size="256MB", capacity=1_000_000)


async def main(role: str, prefix: str, count: int, depth: int, size: int | None) -> None:
    layer = make_layer(prefix)
    global MESSAGE
    if size is not None:
        MESSAGE = {"type": "bench.sized", "body": b"x" * size}
    try:
        if role == "echo":
            handshake()
            for _ in range(count):
                await layer.send("bench.pong", await layer.receive("bench.ping"))
        elif role == "ping":
            handshake()
            started = time.perf_counter()
            for _ in range(count):
                await layer.send("bench.ping", MESSAGE)
                await layer.receive("bench.pong")
            print(json.dumps({"rate": count / (time.perf_counter() - started)}), flush=True)
        elif role == "produce":
            for _ in range(depth):
                await layer.send("bench.stream", MESSAGE)
            handshake()
            sent = 0
            while sent < count:
                try:
                    await layer.send("bench.stream", MESSAGE)
                    sent += 1
                except ChannelFull:
                    await asyncio.sleep(0.001)
        elif role == "consume":
            handshake()
            started = time.perf_counter()
            for _ in range(count):
                await layer.receive("bench.stream")
            print(json.dumps({"rate": count / (time.perf_counter() - started)}), flush=True)
        elif role == "solo":
            handshake()
            started = time.perf_counter()
            for _ in range(count):
                await layer.send("bench.solo", MESSAGE)
                await layer.receive("bench.solo")
            print(json.dumps({"rate": count / (time.perf_counter() - started)}), flush=True)
        elif role == "idle":
            handshake()
            cpu, wall = time.process_time(), time.perf_counter()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(layer.receive("bench.idle"), count)
            used = (time.process_time() - cpu) / (time.perf_counter() - wall)
            print(json.dumps({"cpu_percent": 100 * used}), flush=True)
    finally:
        await layer.close()


if __name__ == "__main__":
    keep_freed_memory()
    role, prefix, count, *rest = sys.argv[1:]
    depth, size = (int(rest[0]) if rest else 0), (int(rest[1]) if len(rest) > 1 else None)
    asyncio.run(main(role, prefix, int(count), depth, size))
