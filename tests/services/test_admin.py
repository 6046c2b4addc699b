"""The admin port: health, readiness and Prometheus metrics, apart from the app's routes."""

from __future__ import annotations

import httpx
import pytest
import websockets

from tests.services.conftest import Served

pytestmark = pytest.mark.timeout(60)


async def test_admin_endpoints(served: Served) -> None:
    async with httpx.AsyncClient(base_url=served.url, timeout=10) as client:
        assert (await client.get("/json")).status_code == 200
        assert (await client.get("/healthz")).status_code == 404  # the app's namespace, not ours
        async with websockets.connect(f"{served.ws_url}/echo") as ws:
            await ws.send("hi")
            assert await ws.recv() == "hi"
            assert served.front.metric("kit_open_websockets", role="protocol") == 1
            held = [w.metric("kit_open_websockets", role="worker") for w in served.workers]
            assert sum(held) == 1
    for service in {id(s): s for s in (served.front, *served.workers)}.values():
        assert service.admin("/healthz").text == "ok\n"
        ready = service.admin("/readyz")
        assert ready.status_code == 200 and ready.json() == {"ready": True, "failing": []}
        assert service.admin("/nope").status_code == 404
        text = service.admin("/metrics").text
        for name in (
            "kit_requests_total",
            "kit_request_duration_seconds_bucket",
            "kit_inflight_connections",
            "kit_open_websockets",
            'kit_layer{stat="sent"}',
        ):
            assert name in text, name
    assert served.front.metric("kit_requests_total", role="protocol", status="200") >= 1
    assert served.front.metric("kit_request_duration_seconds_count", role="protocol") >= 1
