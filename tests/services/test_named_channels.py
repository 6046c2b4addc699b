"""Background channels (``layerkit worker --channels``): a real ``ChannelNameRouter`` consumer of
the Django chat, fed from the layer as ``manage.py runworker bg-tasks`` would feed it."""

from __future__ import annotations

import asyncio
import contextlib
import json
from pathlib import Path

import httpx
import pytest
import websockets
import yaml

from layer.config import parse, resolve
from tests.services.conftest import StackFactory, serve
from tests.services.procs import Service

pytestmark = pytest.mark.timeout(120)

DJANGO_APP = "tests.services.djchat.asgi:application"
SETTINGS = "tests.services.djchat.settings"  # CHANNEL_LAYERS read from $LAYER_CONFIG


async def shout(client: httpx.AsyncClient, room: str, text: str) -> None:
    posted = await client.post(f"/rooms/{room}/shout/", content=json.dumps({"text": text}))
    assert posted.status_code == 202


async def test_a_worker_serves_a_background_channel(stacks: StackFactory, events: Path) -> None:
    """Of two workers only one serves bg-tasks: every shout is done by it, a consumer that raises
    (a message type it has no handler for) comes back for the next message, and a draining
    worker finishes the message it holds."""
    stack = stacks("redis")
    env = {"KIT_APP": DJANGO_APP, "DJANGO_SETTINGS_MODULE": SETTINGS}
    background = stack.add("worker", KIT_CHANNELS="bg-tasks", **env)
    other = stack.add("worker", **env)
    front = stack.add("protocol", **env)
    assert "serving background channels bg-tasks" in background.output()
    async with (
        httpx.AsyncClient(base_url=front.url, timeout=20) as client,
        contextlib.AsyncExitStack() as opened,
    ):
        ws = None  # a member of the room on the other worker: it outlives the drain below
        for _ in range(20):
            ws = await opened.enter_async_context(websockets.connect(f"{front.ws_url}/chat/bg/"))
            if json.loads(await ws.recv())["pid"] == other.pid:
                break
        assert ws is not None
        await shout(client, "bg", "hi")
        assert json.loads(await ws.recv()) == {"text": f"HI (from {background.pid})"}

        layer = _client_layer(stack.backend.env["REDIS_URL"])
        await layer.send("bg-tasks", {"type": "whisper", "text": "no handler for this"})
        await layer.close()
        await shout(client, "bg", "after")
        assert json.loads(await ws.recv()) == {"text": f"AFTER (from {background.pid})"}
        log = background.output()
        assert "the app for background channel bg-tasks raised" in log
        assert "No handler for message type whisper" in log

        await shout(client, "bg", "slow one")
        await asyncio.sleep(0.3)  # taken: the consumer sleeps a second over it
        await asyncio.to_thread(background.stop)
        drained = await asyncio.wait_for(ws.recv(), 15)  # bounds a hung test only
        assert json.loads(drained) == {"text": f"SLOW ONE (from {background.pid})"}
    assert background.process is not None and background.process.returncode == 0


def _client_layer(url: str):  # type: ignore[no-untyped-def]
    """The test's own client of the stack's Redis layer (config/redis.yaml at ``url``)."""
    data = yaml.safe_load(resolve("redis").read_text())
    return parse(data, "redis", {"REDIS_URL": url})["default"].build()


async def test_one_process_shares_the_apps_layer(stacks: StackFactory, events: Path) -> None:
    """combined on the in-memory layer named only in the settings: the view's send goes to the
    instance Channels built, and the worker receives on that very instance."""
    env = {
        "KIT_APP": DJANGO_APP,
        "LAYER_CONFIG": "",
        "DJANGO_SETTINGS_MODULE": "tests.services.djchat.settings_inmemory",
        "KIT_CHANNELS": "bg-tasks",
    }
    served = serve(stacks, "inmemory", events, **env)
    async with (
        httpx.AsyncClient(base_url=served.url, timeout=20) as client,
        websockets.connect(f"{served.ws_url}/chat/lobby/") as ws,
    ):
        await ws.recv()
        await shout(client, "lobby", "together")
        assert json.loads(await ws.recv()) == {"text": f"TOGETHER (from {served.front.pid})"}


@pytest.mark.parametrize("names", ["bg-tasks,reply!abc", "bad name?", "x" * 100])
def test_a_channel_a_worker_cannot_listen_on_is_a_usage_error(names: str) -> None:
    service = Service("worker", {"KIT_CHANNELS": names, "LAYER_CONFIG": "ipc"})
    try:
        service.start(wait=False)
        assert service.wait() == 2
        assert "$KIT_CHANNELS: " in service.output()
        assert "is not a channel name a worker can listen on" in service.output()
    finally:
        service.discard()
