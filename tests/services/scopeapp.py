"""An app that answers with what the server told it: the scope's scheme, root_path, path and
client (HTTP as JSON, WebSocket as one JSON text frame)."""

from __future__ import annotations

import json
from typing import Any


async def application(scope: dict[str, Any], receive: Any, send: Any) -> None:
    seen = json.dumps({key: scope.get(key) for key in ("scheme", "root_path", "path", "client")})
    if scope["type"] == "http":
        headers = [(b"content-type", b"application/json")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": seen.encode()})
    elif scope["type"] == "websocket":
        await receive()
        await send({"type": "websocket.accept"})
        await send({"type": "websocket.send", "text": seen})
        await send({"type": "websocket.close", "code": 1000})
