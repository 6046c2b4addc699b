"""The protocol server's HTTP relay: a request goes to the work channel, its worker's answer
comes back through the connection's inbox and is written to the client; a body that streams
(either way) flows under the per-connection window. Body-less requests start without a task
(services/plain.py) and come here only if their answer is not whole.
"""

from __future__ import annotations

import asyncio
import time

from layer.messages import Message
from services import messages as msg
from services import replies, wire
from services import uvicorn_bridge as bridge
from services.connection import Conn
from services.messages import FAIL, GONE
from services.plain import BridgeHttpProtocol, PlainRequest
from services.relay import Receive, Relay, Scope, Send
from services.uvicorn_bridge import Cycle


class HttpRelay(Relay):
    """Relays HTTP requests and their responses."""

    def finish(self, conn: Conn, status: int, started: float) -> None:
        """The connection's HTTP response is settled: forget it, count it."""
        if self._conns.pop(conn.id, None) is not None:
            self._requests.record(status, time.perf_counter() - started)

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        started = time.perf_counter()
        conn = self._open(False)
        pump: asyncio.Task[None] | None = None
        status = 499
        try:
            first = await receive()
            body: bytes = first.get("body", b"")
            more: bool = first.get("more_body", False)
            rest = b""
            if len(body) > self.chunk:
                body, rest = body[: self.chunk], body[self.chunk :]
            why = await self._submit(self._open_message(conn, scope, body, more or bool(rest)))
            if why is not None:
                status = await replies.refuse(send, why)
                return
            status, pump = await self._relay_http(conn, receive, send, rest, more)
        finally:
            if pump is not None:
                pump.cancel()
            self.finish(conn, status, started)

    # -- body-less requests, without a task (services/plain.py) ----------------------------

    def relay_plain(self, cycle: Cycle, http: BridgeHttpProtocol) -> None:
        """Relay a body-less request from callbacks; called by the HTTP protocol."""
        conn = PlainRequest(self._new_id(), self._loop, cycle, http, self)
        self._conns[conn.id] = conn
        http.later(self._submit_plain(conn, self._open_message(conn, bridge.scope_of(cycle))))

    async def _submit_plain(self, conn: PlainRequest, message: Message) -> None:
        why = await self._submit(message)
        if why is not None:
            await conn.refuse(why)

    async def resume(self, conn: PlainRequest, scope: Scope, receive: Receive, send: Send) -> None:
        """Go on relaying a plain request in a uvicorn task (its inbox holds what came)."""
        status, pump = 499, None
        try:
            status, pump = await self._relay_http(conn, receive, send, b"", False)
        finally:
            if pump is not None:
                pump.cancel()
            self.finish(conn, status, conn.started)

    async def _relay_http(
        self, conn: Conn, receive: Receive, send: Send, rest: bytes, more: bool
    ) -> tuple[int, asyncio.Task[None] | None]:
        """Relay the worker's response; returns the status sent and the body pump (if any)."""
        status = 0
        pump: asyncio.Task[None] | None = None
        while True:
            message = await conn.get()
            kind = message[msg.TYPE]
            if kind == msg.RESPONSE or kind == msg.RESPONSE_BODY:
                more_body = message[msg.MORE]
                if kind == msg.RESPONSE:
                    status = message[msg.STATUS]
                    headers = message[msg.HEADERS]
                    await send(
                        {"type": "http.response.start", "status": status, "headers": headers}
                    )
                await send(
                    {
                        "type": "http.response.body",
                        "body": message[msg.DATA],
                        "more_body": more_body,
                    }
                )
                if not more_body:
                    return status, pump
                if pump is None:  # a streaming response: the worker must hear if the client leaves
                    pump = asyncio.create_task(self._pump_body(conn, receive, rest, more))
                await self._consumed(conn)
            elif kind == msg.PICKED:
                if pump is None:
                    pump = asyncio.create_task(self._pump_body(conn, receive, rest, more))
            elif kind == GONE:
                return status or 499, pump
            elif status:  # FAIL or APP_ERROR after the response started: uvicorn cuts it short
                return status, pump
            else:  # FAIL (liveness checks: 502/503), APP_ERROR (500, or 502 from a draining worker)
                return await replies.failure(send, msg.code_of(message, 500)), pump

    async def _pump_body(self, conn: Conn, receive: Receive, rest: bytes, more: bool) -> None:
        """Stream the rest of the request body to the worker, then report a disconnect."""
        worker = conn.worker
        assert worker is not None
        pending = [(rest, more)] if rest else []
        while True:
            for data, _ in pending:
                for piece, tail in wire.slices(data, self.chunk):
                    await wire.window(conn).reserve()
                    last = not tail and not more
                    message = msg.request_body(conn.id, piece, not last)
                    if not await self._to_worker(worker, message):
                        conn.put(msg.local(FAIL, 502))
                        return
            if not more:
                break
            event = await receive()
            if event["type"] == "http.disconnect":
                break
            more = event.get("more_body", False)
            pending = [(event.get("body", b""), more)]
        while (await receive())["type"] != "http.disconnect":
            pass
        await self._to_worker(worker, msg.disconnect(conn.id))
        conn.put(msg.local(GONE))
