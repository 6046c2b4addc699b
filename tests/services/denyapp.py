"""A WebSocket app that uses the ``websocket.http.response`` extension when the scope offers it:
``/deny`` answers the handshake with its own HTTP response (``/deny-long`` streams a body larger
than the windows), anything else accepts and sends the scope's extensions as JSON."""

from __future__ import annotations

import json
from typing import Any

LONG = [b"%06d," % n for n in range(40_000)]  # 280 kB in many parts: beyond one window of chunks


async def application(scope: dict[str, Any], receive: Any, send: Any) -> None:
    assert scope["type"] == "websocket"
    await receive()  # websocket.connect
    extensions = scope.get("extensions") or {}
    if scope["path"].startswith("/deny") and "websocket.http.response" in extensions:
        headers = [(b"content-type", b"text/plain"), (b"x-denied-by", b"app")]
        await send({"type": "websocket.http.response.start", "status": 401, "headers": headers})
        if scope["path"] == "/deny":
            await send({"type": "websocket.http.response.body", "body": b"log in first"})
            return
        for n in range(0, len(LONG), 1000):
            body = b"".join(LONG[n : n + 1000])
            more = n + 1000 < len(LONG)
            await send({"type": "websocket.http.response.body", "body": body, "more_body": more})
        return
    await send({"type": "websocket.accept"})
    await send({"type": "websocket.send", "text": json.dumps(sorted(extensions))})
    await send({"type": "websocket.close", "code": 1000})
