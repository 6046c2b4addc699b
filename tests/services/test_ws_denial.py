"""The scope keeps the ASGI extensions the services carry end to end: ``websocket.http.response``
(uvicorn supports it in the protocol server; the worker relays it), so an app can answer a
WebSocket handshake with an HTTP response of its own, as under uvicorn alone."""

from __future__ import annotations

import json

import httpx
import pytest
import websockets
from websockets.exceptions import InvalidStatus

from tests.services.conftest import StackFactory, serve
from tests.services.denyapp import LONG
from tests.services.procs import Service

pytestmark = pytest.mark.timeout(120)

APP = "tests.services.denyapp:application"


def handshake(front: Service, path: str) -> httpx.Response:
    """A raw upgrade request, to read the denial response whole."""
    headers = {
        "connection": "Upgrade",
        "upgrade": "websocket",
        "sec-websocket-version": "13",
        "sec-websocket-key": "dGhlIHNhbXBsZSBub25jZQ==",
    }
    return httpx.get(f"{front.url}{path}", headers=headers, timeout=20)


@pytest.mark.parametrize("name", ["inmemory", "redis"])
async def test_denial_response_and_scope_extensions(
    stacks: StackFactory, tmp_path: object, name: str
) -> None:
    served = serve(stacks, name, tmp_path / "events.log", KIT_APP=APP)  # type: ignore[operator]
    async with websockets.connect(f"{served.ws_url}/hello") as ws:
        assert json.loads(await ws.recv()) == ["websocket.http.response"]
    with pytest.raises(InvalidStatus) as denied:
        async with websockets.connect(f"{served.ws_url}/deny"):
            pass
    response = denied.value.response
    assert response.status_code == 401
    assert response.headers["x-denied-by"] == "app"
    assert response.body == b"log in first"
    long = handshake(served.front, "/deny-long")  # streamed past the window, acknowledged
    assert long.status_code == 401 and long.content == b"".join(LONG)
    # The connection counts under its HTTP status; the server goes on serving.
    async with websockets.connect(f"{served.ws_url}/again") as ws:
        assert json.loads(await ws.recv()) == ["websocket.http.response"]
