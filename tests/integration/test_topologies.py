"""1. HTTP through every topology: the status endpoint names the backend, and in the split
topologies the request was served by a worker container, not by the protocol container (in
each local pod, by that pod's own worker)."""

from __future__ import annotations

import httpx
import pytest

from tests.integration.stack import Stack

pytestmark = pytest.mark.integration

# entry service -> (backend module, services whose containers may serve its requests)
TOPOLOGIES = {
    "combined": ("layer.inmemory", {"combined"}),
    "pod-a-protocol": ("layer.redis", {"pod-a-worker", "pod-b-worker"}),
    "pod-b-protocol": ("layer.redis", {"pod-a-worker", "pod-b-worker"}),
    "ipc-protocol": ("layer.ipc", {"ipc-worker"}),
    # Local + Redis: a request never leaves its pod
    "local-a-protocol": ("layer.local", {"local-a-worker"}),
    "local-b-protocol": ("layer.local", {"local-b-worker"}),
}


@pytest.mark.parametrize("entry", sorted(TOPOLOGIES))
def test_status_names_backend_and_serving_container(stack: Stack, entry: str) -> None:
    backend, servers = TOPOLOGIES[entry]
    hosts = {stack.hostname(service): service for service in servers}
    seen = set()
    with httpx.Client(base_url=stack.url(entry), timeout=10) as client:
        for _ in range(6):
            response = client.get("/status")
            assert response.status_code == 200, response.text
            status = response.json()
            assert status["backend"].startswith(backend + "."), status
            assert status["hostname"] in hosts, (status, hosts)
            seen.add(hosts[status["hostname"]])
        page = client.get("/")
        assert page.status_code == 200
        assert "text/html" in page.headers["content-type"]
    if entry != "combined":
        assert stack.hostname(entry) not in {stack.hostname(s) for s in seen}
        assert all(stack.state(s)["running"] for s in seen)


def test_admin_port_is_separate(stack: Stack) -> None:
    with httpx.Client(base_url=stack.url("pod-a-protocol", 8081), timeout=10) as client:
        assert client.get("/healthz").status_code == 200
        metrics = client.get("/metrics")
        assert metrics.status_code == 200
        assert "kit_" in metrics.text
    with httpx.Client(base_url=stack.url("pod-a-protocol"), timeout=10) as client:
        assert client.get("/healthz").status_code == 404  # the app's routes are the app's own
