"""5. `docker stop` one Redis shard: requests whose channels live on the other shards keep working,
those routed to the stopped shard fail with an error (not a hang); `docker start` it and everything
recovers without any app container restarting.

Which shard holds what comes from the layer's own ring, built from the same config and shard
list as the pods; which channels the pods' processes receive on comes from their start-up logs.
"""

from __future__ import annotations

import asyncio
import re
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from layer.config import parse
from tests.integration.chat import landing_on, new_room
from tests.integration.stack import Stack, docker

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
PODS = ("pod-a-protocol", "pod-b-protocol")
WORKERS = ("pod-a-worker", "pod-b-worker")
WORK_CHANNEL = "work.asgi"  # services/wire.py: where every worker takes new connections
CHANNEL_LOG = re.compile(r"(?:reply channel|worker channel) ([A-Za-z0-9_.\-!]+)")
FAIL_BOUND = 30.0  # a request to the stopped shard must end (with an error) well before this


def sharded_layer() -> Any:
    """The layer the pods build, outside the containers: used for its ring only."""
    data = yaml.safe_load((ROOT / "config" / "redis-sharded.yaml").read_text())
    environ = {f"REDIS_SHARD_{i}": f"redis://redis-{i}:6379/0" for i in range(3)}
    return parse(data, "config/redis-sharded.yaml", environ)["default"].build()


def group_shard(layer: Any, room: str) -> int:
    """Shard of the demo's room group (`chat.<room>`)."""
    return int(layer.shard_of_group(f"chat.{room}"))


def process_channel(stack: Stack, service: str) -> str:
    """The channel a protocol server / worker receives on, from the last start in its logs."""
    found = CHANNEL_LOG.findall(stack.logs(service))
    assert found, f"{service} logged no channel"
    return str(found[-1])


async def post(client: httpx.AsyncClient, room: str, text: str) -> int:
    response = await client.post(f"/rooms/{room}/messages", json={"user": "t", "text": text})
    if response.status_code >= 500:  # who answered: our services (reason text) or uvicorn
        print(f"{response.status_code} for {room} via {client.base_url}: {response.text[:200]!r}")
    return response.status_code


def trouble(stack: Stack, services: tuple[str, ...]) -> str:
    """The recent warnings and errors of ``services``: why a request failed, for the report."""
    lines = []
    for service in services:
        for line in stack.logs(service, 200).splitlines():
            if '"level": "error"' in line or '"level": "warning"' in line:
                lines.append(f"{service}: {line[:800]}")
    return "\n".join(lines[-40:])


def runs(stack: Stack, service: str) -> tuple[str, int]:
    state = stack.state(service)
    return state["started"], state["restarts"]


async def test_stopped_shard_fails_only_its_traffic_and_recovers(stack: Stack) -> None:
    layer = sharded_layer()
    work = layer.shard_of(WORK_CHANNEL)
    homes = {s: layer.shard_of(process_channel(stack, s)) for s in PODS + WORKERS}
    # Stop a shard the work channel does not live on, and if possible no process either.
    candidates = [k for k in range(3) if k != work]
    candidates.sort(key=lambda k: (sum(homes[p] == k for p in PODS), list(homes.values()).count(k)))
    stopped = candidates[0]
    # A request served by a worker whose own channel is on the stopped shard fails too (5xx);
    # which worker takes a request is not known in advance.
    stranded = [w for w in WORKERS if homes[w] == stopped]
    rooms: dict[int, list[str]] = {0: [], 1: [], 2: []}
    n = 0
    while min(len(r) for r in rooms.values()) < 2:
        room = f"shard-{n}"
        rooms[group_shard(layer, room)].append(room)
        n += 1
    app = [s for s in stack.services() if not s.startswith("redis-")]
    before = {s: runs(stack, s) for s in app}

    redis = f"redis-{stopped}"
    docker("stop", stack.container(redis))
    results: dict[tuple[str, str], int | str] = {}
    try:
        for pod in PODS:
            async with httpx.AsyncClient(base_url=stack.url(pod), timeout=FAIL_BOUND) as client:
                for shard, names in rooms.items():
                    for room in names:
                        try:
                            results[(pod, room)] = await post(client, room, "during")
                        except httpx.TimeoutException as error:
                            results[(pod, room)] = f"timeout: {error!r}"
                        # Fails if the room's group or this pod's reply channel is on the
                        # stopped shard; else succeeds (or 5xx from a stranded worker).
                        status = results[(pod, room)]
                        where = (pod, room, shard, stopped, status, homes)
                        if shard == stopped or homes[pod] == stopped:
                            assert isinstance(status, int) and status >= 500, where
                        elif stranded:  # 5xx if a stranded worker took it
                            assert status == 202 or (isinstance(status, int) and status >= 500), (
                                where
                            )
                        else:
                            assert status == 202, f"{where}\n{trouble(stack, (pod, *WORKERS))}"
    finally:
        docker("start", stack.container(redis))
    await asyncio.to_thread(stack.wait_healthy, redis)
    if any(homes[pod] != stopped for pod in PODS):  # the other shards kept serving
        assert 202 in results.values(), results

    # Recovery: the same requests succeed again through both pods, nobody restarted.
    pending = {(pod, room) for pod in PODS for names in rooms.values() for room in names}
    for _ in range(60):
        for pod, room in sorted(pending):
            async with httpx.AsyncClient(base_url=stack.url(pod), timeout=FAIL_BOUND) as client:
                if await post(client, room, "after") == 202:
                    pending.discard((pod, room))
        if not pending:
            break
        await asyncio.sleep(1)
    assert not pending, f"still failing after {redis} came back: {sorted(pending)}"
    # WebSockets too, through each pod to each worker (frames go protocol -> worker channel):
    # the first connection after the restart must work, no retry.
    for pod in PODS:
        for worker in WORKERS:
            try:
                ws, others = await landing_on(
                    stack.url(pod), new_room("back"), stack.hostname(worker)
                )
            except TimeoutError:
                raise AssertionError(
                    f"WebSockets through {pod} to {worker} got no echo after {redis} came back "
                    f"(work channel on redis-{work}, process channels {homes})"
                ) from None
            await asyncio.gather(ws.close(), *(other.close() for other in others))
    assert {s: runs(stack, s) for s in app} == before
    failed = sorted((*k, v) for k, v in results.items() if v != 202)
    print(
        f"shard: stopped {redis} (work channel on redis-{work}, process channels {homes}); "
        f"{len(results) - len(failed)} requests served, failed as routed: {failed}; "
        "all served again after start, WebSockets at the first try, "
        "no app container restarted"
    )
