"""A worker that stalls while requests pile up and expire on the work channel serves again the
moment it resumes (issue 18: over IPC, the expired backlog overflowed the segment's journal and
every later request answered 503 until someone ran `python -m layer.ipc clean`)."""

from __future__ import annotations

import asyncio
import signal
import time
from pathlib import Path

import httpx
import pytest

from tests.services.conftest import CROSS, StackFactory, serve

pytestmark = pytest.mark.timeout(120)

STALLED_REQUESTS = 120  # each leaves a k.http on the work channel; 35 overflowed the journal


@pytest.mark.parametrize("name", CROSS)
async def test_a_worker_resumes_after_its_backlog_expired(
    stacks: StackFactory, events: Path, name: str
) -> None:
    served = serve(stacks, name, events, workers=1, LAYER_EXPIRY="1", KIT_PICKUP_TIMEOUT="1.5")
    worker = served.workers[0]
    async with httpx.AsyncClient(base_url=served.url, timeout=30) as client:
        assert (await client.get("/json")).status_code == 200
        worker.signal(signal.SIGSTOP)
        try:
            stalled = await asyncio.gather(*(client.get("/json") for _ in range(STALLED_REQUESTS)))
            assert {r.status_code for r in stalled} == {503}  # nobody picked them up in time
            await asyncio.sleep(1.2)  # and every one of them has expired on the work channel
        finally:
            worker.signal(signal.SIGCONT)
        started = time.monotonic()
        answers = [(await client.get("/json")).status_code for _ in range(20)]
        print(f"{name}: 20 requests answered {answers} in {time.monotonic() - started:.2f} s")
        assert answers == [200] * 20
    assert worker.healthy()
