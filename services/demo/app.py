"""Demo chat as a bare ASGI 3 app (no framework), so it runs the same under uvicorn or a worker.

Routes: ``GET /`` page, ``WS /ws/<room>`` chat, ``POST /rooms/<room>/messages`` (JSON
``{"user", "text"}``) posts into a room with ``group_send``, ``GET /status`` says who served it,
``GET /json`` and ``WS /echo`` are the benchmark's small endpoints, ``GET /bytes/<n>`` answers
``n`` bytes (at most 1 MiB) for its response-size runs.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import socket
from importlib import resources
from typing import Any

from services.context import get_layer, role

Scope = dict[str, Any]

ROOM_RE = re.compile(r"[A-Za-z0-9_\-]{1,64}")
MAX_POST = 64 * 1024
MAX_BYTES = 1 << 20
_BYTES_RE = re.compile(r"/bytes/([0-9]{1,7})")
_HOSTNAME = socket.gethostname()
_JSON = [(b"content-type", b"application/json")]


async def application(scope: Scope, receive: Any, send: Any) -> None:
    kind = scope["type"]
    path: str = scope.get("path", "")
    if kind == "lifespan":
        while (await receive())["type"] != "lifespan.shutdown":
            await send({"type": "lifespan.startup.complete"})
        await send({"type": "lifespan.shutdown.complete"})
    elif kind == "websocket":
        if path == "/echo":
            await _echo(receive, send)
        elif path.startswith("/ws/") and ROOM_RE.fullmatch(path[4:]):
            await _chat(path[4:], receive, send)
        else:
            await send({"type": "websocket.close", "code": 4404})
    elif kind == "http":
        await _http(scope, path, receive, send)


async def _http(scope: Scope, path: str, receive: Any, send: Any) -> None:
    method = scope["method"]
    if path == "/json" and method == "GET":
        await _reply(send, 200, b'{"message":"hello, world"}', _JSON)
    elif (sized := _BYTES_RE.fullmatch(path)) and method == "GET":
        n = int(sized.group(1))
        if n > MAX_BYTES:
            await _error(send, 404, f"at most {MAX_BYTES} bytes, not {n}")
        else:
            await _reply(send, 200, b"x" * n, [(b"content-type", b"application/octet-stream")])
    elif path == "/" and method == "GET":
        page = resources.files("services.demo").joinpath("index.html").read_bytes()
        await _reply(send, 200, page, [(b"content-type", b"text/html; charset=utf-8")])
    elif path == "/status" and method == "GET":
        await _reply(send, 200, json.dumps(status()).encode(), _JSON)
    elif path.startswith("/rooms/") and path.endswith("/messages"):
        room = path[len("/rooms/") : -len("/messages")]
        if method != "POST":
            await _error(send, 405, "use POST")
        elif not ROOM_RE.fullmatch(room):
            await _error(send, 404, f"room {room!r} is not a valid room name")
        else:
            await _post(room, receive, send)
    else:
        await _error(send, 404, f"no route for {method} {path}")


def status() -> dict[str, Any]:
    """Who is serving: the layer backend, host, pid and role (tests use it to tell pods apart)."""
    layer = get_layer()
    backend = f"{type(layer).__module__}.{type(layer).__qualname__}"
    return {"backend": backend, "hostname": _HOSTNAME, "pid": os.getpid(), "role": role()}


async def _post(room: str, receive: Any, send: Any) -> None:
    body = b""
    while True:
        event = await receive()
        if event["type"] == "http.disconnect":
            return
        body += event.get("body", b"")
        if len(body) > MAX_POST:
            await _error(send, 413, f"body larger than {MAX_POST} bytes")
            return
        if not event.get("more_body"):
            break
    try:
        data = json.loads(body)
        user, text = data["user"], data["text"]
        if not isinstance(user, str) or not isinstance(text, str):
            raise TypeError
    except (ValueError, KeyError, TypeError):
        await _error(send, 400, 'expected a JSON object {"user": str, "text": str}')
        return
    await get_layer().group_send(_group(room), _chat_message(room, user, text))
    await _reply(send, 202, json.dumps({"ok": True, "room": room}).encode(), _JSON)


def _group(room: str) -> str:
    return f"chat.{room}"


def _chat_message(room: str, user: str, text: str) -> dict[str, Any]:
    return {
        "type": "chat.message",
        "room": room,
        "user": user[:64],
        "text": text[:4096],
        "served_by": f"{_HOSTNAME}:{os.getpid()}",
    }


async def _chat(room: str, receive: Any, send: Any) -> None:
    """Join the room's group; relay group messages to the client, client messages to the group."""
    if (await receive())["type"] != "websocket.connect":
        return
    layer = get_layer()
    channel = await layer.new_channel("chat")
    await layer.group_add(_group(room), channel)  # before accepting: no message is missed
    await send({"type": "websocket.accept"})

    async def relay() -> None:
        while True:
            message = await layer.receive(channel)
            await send({"type": "websocket.send", "text": json.dumps(message)})

    task = asyncio.create_task(relay())
    try:
        while True:
            event = await receive()
            if event["type"] != "websocket.receive":
                break
            try:
                data = json.loads(event.get("text") or event.get("bytes") or b"")
                message = _chat_message(room, str(data["user"]), str(data["text"]))
            except (ValueError, KeyError, TypeError):
                await send({"type": "websocket.send", "text": '{"error":"bad message"}'})
                continue
            await layer.group_send(_group(room), message)
    finally:
        task.cancel()
        await layer.group_discard(_group(room), channel)


async def _echo(receive: Any, send: Any) -> None:
    await receive()
    await send({"type": "websocket.accept"})
    while True:
        event = await receive()
        if event["type"] != "websocket.receive":
            return
        await send({**event, "type": "websocket.send"})


async def _reply(send: Any, status: int, body: bytes, headers: list[tuple[bytes, bytes]]) -> None:
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def _error(send: Any, status: int, detail: str) -> None:
    await _reply(send, status, json.dumps({"error": detail}).encode(), _JSON)
