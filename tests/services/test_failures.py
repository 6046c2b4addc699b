"""Every failure the services promise to handle, with real processes, signals and clients."""

from __future__ import annotations

import asyncio
import concurrent.futures
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
import redis
import websockets

from tests.services.conftest import CROSS, StackFactory, serve
from tests.services.procs import ROOT, closed_code, wait_until

pytestmark = pytest.mark.timeout(120)

# The promise is "within 5 s"; a client that has waited longer gives up and fails the test.
PROMISE = 5.0


def events_of(path: Path, event: str) -> list[list[str]]:
    if not path.exists():
        return []
    lines = [line.split() for line in path.read_text().splitlines()]
    return [fields for fields in lines if fields[0] == event]


def test_work_channel_full_is_503_with_retry_after(stacks: StackFactory, events: Path) -> None:
    served = serve(
        stacks,
        "inmemory",
        events,
        KIT_CONCURRENCY="1",
        LAYER_WORK_CAPACITY="1",
        KIT_PICKUP_TIMEOUT="30",
    )
    front = served.front
    with (
        concurrent.futures.ThreadPoolExecutor(2) as pool,
        httpx.Client(base_url=served.url, timeout=30) as client,
    ):
        busy = client.build_request("GET", "/sleep", params={"s": "3"})
        queued = client.build_request("GET", "/sleep", params={"s": "0"})
        running = pool.submit(client.send, busy)
        wait_until(lambda: front.metric("kit_inflight_connections", role="worker") == 1, "busy")
        waiting = pool.submit(client.send, queued)
        wait_until(
            lambda: front.metric("kit_inflight_connections", role="protocol", state="waiting") == 1,
            "a queued request",
        )
        refused = client.get("/json")
        assert refused.status_code == 503
        assert refused.headers["retry-after"] == "1"
        assert running.result().status_code == 200 and waiting.result().status_code == 200
    assert front.metric("kit_requests_total", role="protocol", status="503") == 1


def test_no_pickup_in_time_is_503_and_ws_1013(stacks: StackFactory, events: Path) -> None:
    served = serve(stacks, "inmemory", events, KIT_CONCURRENCY="1", KIT_PICKUP_TIMEOUT="1")
    with (
        concurrent.futures.ThreadPoolExecutor(1) as pool,
        httpx.Client(base_url=served.url, timeout=30) as client,
    ):
        running = pool.submit(client.get, "/sleep", params={"s": "4"})
        wait_until(lambda: events_of(events, "start"), "the worker to be busy")
        late = client.get("/json")
        assert late.status_code == 503 and b"in time" in late.content
        assert late.headers["retry-after"] == "1"  # as for a full queue: try again

        async def websocket() -> int:
            async with websockets.connect(f"{served.ws_url}/echo") as ws:
                return await closed_code(ws, 10)

        assert asyncio.run(websocket()) == 1013
        assert running.result().status_code == 200


async def test_layer_refusing_writes_is_503_and_ws_1013(stacks: StackFactory) -> None:
    """Redis out of memory (noeviction) refuses the request's send with an error reply, not a
    connection error: still the layer's 503 / 1013, not a bare 500 from uvicorn."""
    stack = stacks("redis")
    front = stack.add("protocol", wait=False)
    wait_until(front.healthy, "protocol server")
    admin = redis.Redis.from_url(stack.backend.env["REDIS_URL"])
    admin.config_set("maxmemory-policy", "noeviction")
    admin.config_set("maxmemory", 1)
    async with httpx.AsyncClient(base_url=front.url, timeout=10) as client:
        refused = await client.get("/json")
        assert refused.status_code == 503 and b"channel layer" in refused.content
        assert refused.headers["retry-after"] == "1"
    async with websockets.connect(f"{front.ws_url}/echo") as ws:
        assert await closed_code(ws, 10) == 1013


@pytest.mark.parametrize("name", CROSS)
async def test_protocol_without_workers(stacks: StackFactory, name: str) -> None:
    stack = stacks(name)
    front = stack.add("protocol", wait=False, KIT_PICKUP_TIMEOUT="1")
    wait_until(front.healthy, "protocol server")
    assert not front.ready()  # no worker has been seen
    async with httpx.AsyncClient(base_url=front.url, timeout=10) as client:
        assert (await client.get("/json")).status_code == 503
    async with websockets.connect(f"{front.ws_url}/echo") as ws:
        assert await closed_code(ws, 10) == 1013


@pytest.mark.parametrize("name", CROSS)
async def test_worker_killed_mid_request(stacks: StackFactory, events: Path, name: str) -> None:
    served = serve(stacks, name, events)
    front = served.front
    by_pid = {worker.pid: worker for worker in served.workers}
    async with httpx.AsyncClient(base_url=served.url, timeout=PROMISE + 20) as client:
        request = asyncio.create_task(client.get("/sleep", params={"s": "60", "id": "doomed"}))
        await asyncio.to_thread(
            wait_until,
            lambda: front.metric("kit_inflight_connections", state="assigned") == 1,
            "the request to be assigned",
        )
        victim = by_pid[int(events_of(events, "start")[0][2])]
        victim.process.kill()  # type: ignore[union-attr]
        async with asyncio.timeout(PROMISE):
            reply = await request
        assert reply.status_code == 502
        survivors = [w.pid for w in served.workers if w is not victim]
        for _ in range(4):
            status = (await client.get("/status")).json()
            assert status["pid"] in survivors


@pytest.mark.parametrize("name", CROSS)
async def test_worker_killed_closes_websocket_1011(
    stacks: StackFactory, events: Path, name: str
) -> None:
    served = serve(stacks, name, events)
    by_pid = {worker.pid: worker for worker in served.workers}
    async with websockets.connect(f"{served.ws_url}/whoami") as ws:
        victim = by_pid[int(await ws.recv())]
        await ws.send("still there?")
        assert await ws.recv() == "still there?"
        victim.process.kill()  # type: ignore[union-attr]
        assert await closed_code(ws, PROMISE) == 1011
    async with websockets.connect(f"{served.ws_url}/whoami") as ws:
        assert int(await ws.recv()) != victim.pid


@pytest.mark.parametrize("name", CROSS)
async def test_protocol_killed_workers_disconnect_the_app(
    stacks: StackFactory, events: Path, name: str
) -> None:
    served = serve(stacks, name, events, workers=1)
    worker = served.workers[0]
    ws = await websockets.connect(f"{served.ws_url}/whoami?id=orphan")
    assert int(await ws.recv()) == worker.pid
    served.front.process.kill()  # type: ignore[union-attr]
    await asyncio.to_thread(
        wait_until, lambda: events_of(events, "disconnect"), "the app's disconnect event"
    )
    assert events_of(events, "disconnect")[0][1] == "orphan"
    assert worker.metric("kit_inflight_connections", role="worker") == 0
    await ws.close()


@pytest.mark.parametrize("name", CROSS)
async def test_sigterm_drains_the_worker(stacks: StackFactory, events: Path, name: str) -> None:
    served = serve(stacks, name, events, workers=1, KIT_DRAIN_TIMEOUT="20")
    worker = served.workers[0]
    async with (
        httpx.AsyncClient(base_url=served.url, timeout=30) as client,
        websockets.connect(f"{served.ws_url}/whoami?id=drained") as ws,
    ):
        assert int(await ws.recv()) == worker.pid
        request = asyncio.create_task(client.get("/sleep", params={"s": "2", "id": "inflight"}))
        await asyncio.to_thread(wait_until, lambda: events_of(events, "start"), "the request")
        worker.signal(signal.SIGTERM)
        assert await closed_code(ws, 10) == 1012
        reply = await request
        assert reply.status_code == 200 and reply.content == b"slept"
    assert await asyncio.to_thread(worker.wait) == 0
    assert [e[3] for e in events_of(events, "disconnect")] == ["1012"]


@pytest.mark.parametrize("name", CROSS)
async def test_sigterm_on_the_protocol_server_finishes_requests_in_flight(
    stacks: StackFactory, events: Path, name: str
) -> None:
    served = serve(stacks, name, events, workers=1)
    async with httpx.AsyncClient(base_url=served.url, timeout=30) as client:
        slow = asyncio.create_task(client.get("/sleep", params={"s": "1", "id": "slow"}))
        await asyncio.to_thread(wait_until, lambda: events_of(events, "start"), "the request")
        served.front.signal(signal.SIGTERM)
        reply = await slow
    assert reply.status_code == 200 and reply.content == b"slept"
    assert reply.headers["connection"] == "close"  # no next request on it: the server stops
    assert await asyncio.to_thread(served.front.wait) == 0


def test_worker_on_inmemory_exits_at_once() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "services", "worker", "--config", "config/inmemory.yaml"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2
    assert "cannot cross processes" in result.stderr
    assert "--config ipc" in result.stderr and "combined" in result.stderr


@pytest.mark.parametrize("name", CROSS)
async def test_drain_grace_period_over_is_502(
    stacks: StackFactory, events: Path, name: str
) -> None:
    served = serve(stacks, name, events, workers=1, KIT_DRAIN_TIMEOUT="1")
    worker = served.workers[0]
    async with httpx.AsyncClient(base_url=served.url, timeout=30) as client:
        request = asyncio.create_task(client.get("/sleep", params={"s": "60", "id": "too-slow"}))
        await asyncio.to_thread(wait_until, lambda: events_of(events, "start"), "the request")
        worker.signal(signal.SIGTERM)
        async with asyncio.timeout(PROMISE):
            reply = await request
        assert reply.status_code == 502
    assert await asyncio.to_thread(worker.wait) == 0
