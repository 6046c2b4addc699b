"""services/heartbeats.py with real processes: a worker whose event loop is busy past the
heartbeat deadline keeps its connections; one whose loop is stuck loses them."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import pytest
import websockets

from services.heartbeats import STUCK_AFTER
from tests.services.conftest import CROSS, StackFactory, serve
from tests.services.procs import closed_code

pytestmark = pytest.mark.timeout(120)


@pytest.mark.parametrize("name", CROSS)
async def test_a_worker_busy_past_the_heartbeat_deadline_keeps_its_connections(
    stacks: StackFactory, events: Path, name: str
) -> None:
    """The worker's loop stands still for ten times the deadline (an app blocking it; in the
    WebSocket benchmark, loop turns of 1-2 s broadcasting to 5,000 members). Before the beats
    came from a thread, the protocol server gave the worker up after 0.6 s: the request got
    502 and every WebSocket of the worker was closed with 1011."""
    served = serve(stacks, name, events, workers=1, KIT_HEARTBEAT="0.2")  # dead after 0.6 s
    worker = served.workers[0]
    async with (
        websockets.connect(f"{served.ws_url}/whoami?id=idle") as ws,
        httpx.AsyncClient(base_url=served.url, timeout=30) as client,
    ):
        assert int(await ws.recv()) == worker.pid
        blocked = await client.get("/block", params={"s": "6"})
        assert (blocked.status_code, blocked.text) == (200, "blocked")
        await asyncio.sleep(1.0)  # several checks of both sides after the loop is free
        await ws.send("still there?")
        assert await asyncio.wait_for(ws.recv(), 10) == "still there?"
    for service in (served.front, worker):
        log = service.output()
        assert "went silent" not in log and "stopped heart-beating" not in log, log


async def test_a_worker_stuck_past_the_limit_loses_its_connections(
    stacks: StackFactory, events: Path
) -> None:
    """A loop that does not turn for ``STUCK_AFTER`` heartbeats is stuck, not busy: the beats
    stop and the protocol server gives the worker's connections up, as for a dead worker."""
    heartbeat = 0.1
    served = serve(stacks, "ipc", events, workers=1, KIT_HEARTBEAT=str(heartbeat))
    stuck_for = STUCK_AFTER * heartbeat + 5.0
    async with (
        websockets.connect(f"{served.ws_url}/whoami?id=stuck") as ws,
        httpx.AsyncClient(base_url=served.url, timeout=30) as client,
    ):
        assert int(await ws.recv()) == served.workers[0].pid
        blocked = asyncio.create_task(client.get("/block", params={"s": str(stuck_for)}))
        assert await closed_code(ws, stuck_for) == 1011  # before the loop turns again
        await blocked  # (no worker had claimed it: the protocol server waits for its answer)
    assert "stopped heart-beating" in served.front.output()
