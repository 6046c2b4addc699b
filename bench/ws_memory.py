"""``python -m bench.ws_memory [N] [ipc|redis]``: memory per idle WebSocket, measured once.

Starts a protocol server and a worker (default options, the demo chat), opens ``N`` WebSockets
(default 2,000) into one room, checks that every one is open and hears a broadcast, and prints
each process's RSS growth per connection (docs/architecture.md quotes the result).
"""

from __future__ import annotations

import asyncio
import json
import resource
import sys
import time

import httpx
import websockets

from bench.processes import Processes
from bench.subjects import Setup, ipc_split, redis_split
from harness.ports import free_port

SETUPS = {"ipc": ipc_split, "redis": redis_split}


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for {pid}")


def settled(pids: list[int]) -> list[int]:
    """RSS once it stops moving (the allocator and the layer settle after a burst)."""
    time.sleep(2)
    return [rss_kib(pid) for pid in pids]


async def measure(n: int, name: str) -> None:
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # the clients' sockets
    procs, port = Processes(), free_port()
    setup: Setup
    with SETUPS[name]() as setup:
        try:
            setup.start(procs, port)
            procs.wait_ready(port, "/")
            roles = procs.pids()  # worker, protocol: each one's RSS growth is reported
            pids = [pid for _, pid in roles]
            before = settled(pids)
            started = time.perf_counter()
            # The demo joins the room's group before it accepts: an open socket is a member.
            room = await asyncio.gather(
                *(
                    websockets.connect(
                        f"ws://127.0.0.1:{port}/ws/m", open_timeout=60, ping_interval=None
                    )
                    for _ in range(n)
                )
            )
            opened = time.perf_counter() - started
            after = settled(pids)
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
                sent = time.perf_counter()
                await client.post("/rooms/m/messages", json={"user": "b", "text": "x"})
                heard = await asyncio.gather(*(asyncio.wait_for(ws.recv(), 60) for ws in room))
                spread = time.perf_counter() - sent
            assert all(json.loads(text)["text"] == "x" for text in heard)
            print(f"{name}: {n} WebSockets open in {opened:.1f} s; a broadcast reached all in "
                  f"{spread * 1000:.0f} ms")  # fmt: skip
            for (role, _), low, high in zip(roles, before, after, strict=True):
                print(
                    f"  {role:8} RSS {low / 1024:6.1f} -> {high / 1024:6.1f} MiB: "
                    f"{(high - low) / n:5.1f} KiB per connection"
                )
            await asyncio.gather(*(ws.close() for ws in room))
        finally:
            procs.stop()


if __name__ == "__main__":
    count = int(sys.argv[1]) if len(sys.argv) > 1 else 2_000
    asyncio.run(measure(count, sys.argv[2] if len(sys.argv) > 2 else "ipc"))
