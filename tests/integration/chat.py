"""A chat client for the demo app over a real WebSocket (the `websockets` package)."""

from __future__ import annotations

import asyncio
import json
import uuid
from typing import Any

from websockets.asyncio.client import ClientConnection, connect

READ = 15.0  # bound on waiting for one message; a hang fails the test instead of stalling CI


def ws_url(http_url: str, room: str) -> str:
    return http_url.replace("http://", "ws://", 1) + f"/ws/{room}"


def new_room(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


async def join(http_url: str, room: str) -> ClientConnection:
    return await connect(ws_url(http_url, room), open_timeout=15, close_timeout=5)


async def say(ws: ClientConnection, user: str, text: str) -> None:
    await ws.send(json.dumps({"user": user, "text": text}))


async def hear(ws: ClientConnection) -> dict[str, Any]:
    """The next chat message this client receives."""
    message: dict[str, Any] = json.loads(await asyncio.wait_for(ws.recv(), READ))
    assert "error" not in message, message
    return message


async def hear_text(ws: ClientConnection, text: str) -> dict[str, Any]:
    """Read until a message with this text arrives (others in the room may talk meanwhile)."""
    async with asyncio.timeout(READ):
        while (message := await hear(ws))["text"] != text:
            pass
    return message


async def landing_on(
    http_url: str, room: str, worker_host: str, attempts: int = 20
) -> tuple[ClientConnection, list[ClientConnection]]:
    """A WebSocket whose connection lives on the worker with this hostname: the chat echo's
    `served_by` names the worker that handled the send (several workers take connections from
    one work channel). The connections that landed elsewhere are returned too, still open."""
    elsewhere = []
    for attempt in range(attempts):
        ws = await join(http_url, room)
        await say(ws, "probe", f"who-{attempt}")
        served_by = (await hear_text(ws, f"who-{attempt}"))["served_by"]
        if served_by.split(":")[0] == worker_host:
            return ws, elsewhere
        elsewhere.append(ws)
    raise AssertionError(f"no connection out of {attempts} landed on {worker_host}")


async def in_room(*clients: ClientConnection) -> None:
    """Wait until every client has joined its room's group (the demo accepts a WebSocket before
    it adds the connection to the group; a client's own echo proves it is in), then leave each
    client's queue empty: a last probe sent after all joined is read through by everyone."""
    for n, ws in enumerate(clients):
        await say(ws, "probe", f"in-{n}")
        await hear_text(ws, f"in-{n}")
    await say(clients[-1], "probe", "all-in")
    for ws in clients:
        await hear_text(ws, "all-in")
