"""The protocol server's WebSocket relay: the handshake goes to the work channel; once a worker
accepts, client frames flow to it and its frames back, each direction under the per-connection
window, until either side closes.
"""

from __future__ import annotations

import asyncio
from typing import Any

from services import messages as msg
from services import replies, wire
from services.connection import Conn
from services.messages import FAIL, GONE
from services.receiving import joined
from services.relay import Receive, Relay, Scope, Send


class WebSocketRelay(Relay):
    """Relays WebSockets."""

    async def _websocket(self, scope: Scope, receive: Receive, send: Send) -> None:
        conn = self._open(True)
        reader: asyncio.Task[None] | None = None
        code = 1006
        try:
            await receive()  # websocket.connect
            patience = conn.created + self.pickup_timeout
            why = await self._submit(self._open_message(conn, scope), patience)
            if why is not None:
                code = await replies.ws_refuse(send, 1013, why)
                return
            code, reader = await self._relay_websocket(conn, receive, send)
        finally:
            del self._conns[conn.id]
            if reader is not None:
                reader.cancel()
                self.metrics.websockets.labels(self.role).dec()
            self.metrics.count(self.role, "websocket", code)

    async def _relay_websocket(
        self, conn: Conn, receive: Receive, send: Send
    ) -> tuple[int, asyncio.Task[None] | None]:
        reader: asyncio.Task[None] | None = None
        parts: list[Any] = []  # of a frame sent in fragments
        code = 0
        while True:
            message = await conn.get()
            kind = message[msg.TYPE]
            if kind == msg.WS_OUT:
                data = joined(parts, message)
                if data is not None:
                    key = "text" if isinstance(data, str) else "bytes"
                    await send({"type": "websocket.send", key: data})
                await self._consumed(conn)
            elif kind == msg.WS_ACCEPT:
                accept = {"type": "websocket.accept", "subprotocol": message.get(msg.SUBPROTOCOL)}
                if message.get(msg.HEADERS):
                    accept["headers"] = message[msg.HEADERS]
                await send(accept)
                self.metrics.websockets.labels(self.role).inc()
                reader = asyncio.create_task(self._read_websocket(conn, receive))
            elif kind == msg.RESPONSE or kind == msg.RESPONSE_BODY:
                # The app denied the handshake with an HTTP response of its own (the ASGI
                # ``websocket.http.response`` extension); returns its status, as the code.
                if kind == msg.RESPONSE:
                    code = message[msg.STATUS]
                    start = {"status": code, "headers": message[msg.HEADERS]}
                    await send({"type": "websocket.http.response.start", **start})
                more = message[msg.MORE]
                body = {"body": message[msg.DATA], "more_body": more}
                await send({"type": "websocket.http.response.body", **body})
                if not more:
                    return code, reader
                await self._consumed(conn)
            elif kind == msg.WS_CLOSE:
                code = message[msg.CODE]
                reason = message.get(msg.REASON) or ""
                await send({"type": "websocket.close", "code": code, "reason": reason})
                return code, reader
            elif kind == GONE:
                return msg.code_of(message, 1006), reader
            elif kind in (FAIL, msg.APP_ERROR):
                code = {503: 1013, 502: 1011}.get(msg.code_of(message, 0), 1011)
                if reader is None:
                    why = "no worker took the connection in time" if code == 1013 else "no worker"
                    return await replies.ws_refuse(send, code, why), reader
                await send({"type": "websocket.close", "code": code})
                return code, reader

    async def _read_websocket(self, conn: Conn, receive: Receive) -> None:
        """Forward client frames to the worker (fragmenting large ones) until the client leaves."""
        worker = conn.worker
        assert worker is not None
        cid = conn.id
        while True:
            event = await receive()
            if event["type"] != "websocket.receive":
                break
            text = event.get("text")
            data = text if text is not None else event.get("bytes") or b""
            for piece, more in wire.slices(data, self.chunk):
                await wire.window(conn).reserve()
                message = msg.frame(msg.WS_IN, cid, piece, more)
                if not await self._to_worker(worker, message):
                    conn.put(msg.local(FAIL, 502))
                    return
        code = event.get("code", 1005)
        await self._to_worker(worker, msg.disconnect(cid, code))
        conn.put(msg.local(GONE, code))
