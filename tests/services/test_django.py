"""A Django Channels chat (consumers + ``get_asgi_application``) runs unmodified in workers."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest
import websockets

from tests.services.conftest import ALL, StackFactory, serve

pytestmark = pytest.mark.timeout(120)

DJANGO_APP = "tests.services.djchat.asgi:application"


@pytest.mark.parametrize("name", ALL)
async def test_django_channels_chat(stacks: StackFactory, events: Path, name: str) -> None:
    served = serve(stacks, name, events, KIT_APP=DJANGO_APP)
    pids = {worker.pid for worker in served.workers}
    async with httpx.AsyncClient(base_url=served.url, timeout=20) as client:
        hello = await client.get("/hello/")
        assert hello.status_code == 200 and hello.json()["pid"] in pids
        assert (await client.get("/missing/")).status_code == 404
        async with (
            websockets.connect(f"{served.ws_url}/chat/lobby/") as alice,
            websockets.connect(f"{served.ws_url}/chat/lobby/") as bob,
        ):
            for ws in (alice, bob):
                assert json.loads(await ws.recv())["pid"] in pids
            await alice.send(json.dumps({"text": "hello from alice"}))
            for ws in (alice, bob):
                assert json.loads(await ws.recv()) == {"text": "hello from alice"}
            posted = await client.post("/rooms/lobby/", content=json.dumps({"text": "via view"}))
            assert posted.status_code == 202
            for ws in (alice, bob):
                assert json.loads(await ws.recv()) == {"text": "via view"}
