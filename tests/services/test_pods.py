"""Two simulated pods on local_redis (two IPC prefixes sharing the stack's Redis shards): a
protocol server counts only the workers of its own pod, the ones that take from its work channel.
Every worker's ``k.hello`` is a group send and reaches both pods; the other pod's must not make
a protocol server ready, or a load balancer would send it requests that end in 503."""

from __future__ import annotations

import httpx
import pytest

from tests.services.conftest import StackFactory
from tests.services.procs import Service, wait_until

pytestmark = pytest.mark.timeout(90)


def received(service: Service) -> float:
    return service.metric("kit_layer", stat="received")


async def test_a_protocol_server_counts_only_its_own_pods_workers(stacks: StackFactory) -> None:
    stack = stacks("local_redis")
    # Pod B's prefix contains pod A's, so the stack's cleanup (a glob on it) removes both.
    pod_b = {"IPC_PREFIX": stack.backend.env["IPC_PREFIX"] + "b", "KIT_PICKUP_TIMEOUT": "1"}
    front_b = stack.add("protocol", wait=False, **pod_b)
    wait_until(front_b.healthy, "pod B's protocol server")
    assert received(front_b) == 0
    worker_a = stack.add("worker")
    front_a = stack.add("protocol")  # waits until ready: pod A's worker's hellos reach it
    # Pod B joined the group before pod A's worker started: the hellos reach it too.
    wait_until(lambda: received(front_b) >= 2, "pod A's worker's hellos at pod B")
    assert not front_b.ready()
    assert front_b.admin("/readyz").json() == {"ready": False, "failing": ["worker seen recently"]}
    async with httpx.AsyncClient(timeout=15) as client:
        # What readiness keeps a load balancer from doing: pod A's worker cannot take it.
        assert (await client.get(f"{front_b.url}/json")).status_code == 503
        served = await client.get(f"{front_a.url}/sleep", params={"s": "0"})
        assert served.status_code == 200 and served.headers["pid"] == str(worker_a.pid)

        worker_b = stack.add("worker", **pod_b)
        wait_until(front_b.ready, "pod B's own worker to make it ready")
        for front, worker in ((front_a, worker_a), (front_b, worker_b)):
            for _ in range(4):  # never the other pod's worker, though both are free
                reply = await client.get(f"{front.url}/sleep", params={"s": "0"})
                assert reply.status_code == 200 and reply.headers["pid"] == str(worker.pid)
    assert front_a.ready()  # pod B's worker's hellos did not disturb it
