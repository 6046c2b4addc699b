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

from tests.services.procs import Service, Stack, backend, wait_until

DEMO = "services.demo.app:application"


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for {pid}")


def settled(services: list[Service]) -> list[int]:
    """RSS once it stops moving (the allocator and the layer settle after a burst)."""
    time.sleep(2)
    return [rss_kib(service.pid) for service in services]


async def measure(n: int, name: str) -> None:
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # the clients' sockets
    with backend(name) as made:
        if name == "ipc":
            made.env["IPC_SIZE"] = "256MB"
        stack = Stack(made)
        try:
            worker = stack.add("worker", KIT_APP=DEMO)
            front = stack.add("protocol", KIT_APP=DEMO)
            services = [front, worker]
            before = settled(services)
            started = time.perf_counter()
            room = await asyncio.gather(
                *(
                    websockets.connect(f"{front.ws_url}/ws/m", open_timeout=60, ping_interval=None)
                    for _ in range(n)
                )
            )
            opened = time.perf_counter() - started
            wait_until(lambda: worker.metric("kit_open_websockets") == n, "all accepted", 60)
            after = settled(services)
            async with httpx.AsyncClient(base_url=front.url, timeout=30) as client:
                sent = time.perf_counter()
                await client.post("/rooms/m/messages", json={"user": "b", "text": "x"})
                heard = await asyncio.gather(*(asyncio.wait_for(ws.recv(), 60) for ws in room))
                spread = time.perf_counter() - sent
            assert all(json.loads(text)["text"] == "x" for text in heard)
            print(f"{name}: {n} WebSockets open in {opened:.1f} s; a broadcast reached all in "
                  f"{spread * 1000:.0f} ms")  # fmt: skip
            for service, low, high in zip(services, before, after, strict=True):
                print(
                    f"  {service.role:8} RSS {low / 1024:6.1f} -> {high / 1024:6.1f} MiB: "
                    f"{(high - low) / n:5.1f} KiB per connection"
                )
            await asyncio.gather(*(ws.close() for ws in room))
        finally:
            stack.close()


if __name__ == "__main__":
    count = int(sys.argv[1]) if len(sys.argv) > 1 else 2_000
    asyncio.run(measure(count, sys.argv[2] if len(sys.argv) > 2 else "ipc"))
