"""The protocol server: an ASGI 3 app (hosted by uvicorn) that hands every connection to a worker.

Each HTTP request or WebSocket becomes one ``k.http``/``k.ws`` message on the shared work
channel; whatever the worker sends back arrives on this process's single reply channel and is
routed to the connection by its id. A watchdog fails connections no worker picked up in time
(503 / close 1013) and connections whose worker stopped heart-beating (502 / close 1011).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections.abc import Coroutine, Mapping
from typing import Any

from uvicorn.protocols.http.httptools_impl import RequestResponseCycle

from layer.base import BaseChannelLayer
from layer.exceptions import ChannelFull, MessageTooLarge
from layer.messages import Message
from services import batching, replies, wire
from services import messages as msg
from services.background import OneInFlight, Vital
from services.connection import Conn
from services.messages import FAIL, GONE, BadMessage
from services.metrics import Metrics
from services.plain import BridgeHttpProtocol, PlainRequest

log = logging.getLogger("layerkit.protocol")

Scope = dict[str, Any]
Receive = Any
Send = Any


class ProtocolServer:
    """Forwards HTTP and WebSocket connections over the layer and relays the answers."""

    role = "protocol"

    def __init__(
        self,
        layer: BaseChannelLayer,
        metrics: Metrics,
        *,
        pickup_timeout: float = 5.0,
        heartbeat: float = 1.0,
    ) -> None:
        self.layer = layer
        self.metrics = metrics
        self.pickup_timeout = pickup_timeout
        self.heartbeat = heartbeat
        self.dead_after = 3 * heartbeat
        self.chunk = wire.chunk_size(layer)
        self.reply = ""
        self.worker_seen = 0.0  # loop time a worker last spoke to us (drives /readyz)
        self._conns: dict[str, Conn] = {}
        self._seen: dict[str, float] = {}
        self._ids = itertools.count()
        self._tasks: list[asyncio.Task[None]] = []
        self._background = OneInFlight(log)  # heartbeats and re-joins
        self.vital = Vital(log)  # the loops: if one dies, /healthz fails
        self._stopping = False
        self._rejects = batching.Rejects(self.role, metrics, log, self._spoiled)
        self._batcher = (
            batching.Batcher(layer, self._lost) if batching.worth_batching(layer) else None
        )
        self._prefix = ""
        self._loop: asyncio.AbstractEventLoop  # set by start()
        self._requests = metrics.http(self.role)
        metrics.add_probe(self._probe)

    # -- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self.reply = await self.layer.new_channel("proto")
        self._prefix = self.layer.client_id + "."
        await self.layer.group_add(wire.PROTOCOL_GROUP, self.reply)
        self._tasks = [
            self.vital.watch(asyncio.create_task(loop, name=name), self._stopped)
            for loop, name in (
                (self._dispatch(), "protocol-dispatch"),
                (self._watchdog(), "protocol-watchdog"),
            )
        ]
        log.info("protocol server reply channel %s", self.reply)

    def _stopped(self) -> bool:
        return self._stopping

    async def stop(self) -> None:
        self._stopping = True
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, self._background.cancel(), return_exceptions=True)
        if self._batcher is not None:
            await self._batcher.close()
        try:
            await self.layer.group_discard(wire.PROTOCOL_GROUP, self.reply)
        except Exception:  # the layer may already be gone; nothing to clean then
            log.debug("group_discard at stop failed", exc_info=True)

    def ready(self) -> bool:
        """A worker spoke to us recently: requests have somewhere to go."""
        return asyncio.get_running_loop().time() - self.worker_seen < 10 * self.heartbeat

    async def _probe(self) -> None:
        waiting = sum(1 for conn in self._conns.values() if conn.worker is None)
        self.metrics.inflight.labels(self.role, "waiting").set(waiting)
        self.metrics.inflight.labels(self.role, "assigned").set(len(self._conns) - waiting)

    # -- background loops ------------------------------------------------------------------

    def _dispatch(self) -> Coroutine[Any, Any, None]:
        """Route everything arriving on the reply channel to its connection."""
        taking = batching.checked(self.layer, msg.TO_PROTOCOL)
        return batching.dispatch(
            self.layer, self.reply, taking, self._route, self._rejects, self.heartbeat
        )

    def _route(self, message: Message) -> None:
        """Hand one (checked) message from a worker to its connection (or note the worker is
        alive)."""
        kind = message[msg.TYPE]
        if kind == msg.HEARTBEAT or kind == msg.HELLO:
            self.worker_seen = self._seen[message[msg.WORKER]] = self._loop.time()
            return
        conn = self._conns.get(message[msg.CONN])
        if conn is None:
            return  # a late answer for a connection that already ended
        if kind not in (msg.WEBSOCKET_REPLIES if conn.websocket else msg.HTTP_REPLIES):
            what = "WebSocket" if conn.websocket else "HTTP request"
            wrong = BadMessage("wrong_connection", f"not for a {what}", kind, conn.id)
            self._rejects(wrong, message, self.reply)
            return
        if conn.worker is None and kind in msg.CLAIMS:
            worker = message[msg.WORKER]
            conn.worker = worker
            conn.assigned = self.worker_seen = self._seen[worker] = self._loop.time()
        if kind == msg.ACK:
            if conn.window is not None:
                conn.window.acked(message[msg.CONSUMED])
        else:
            conn.put(message)

    def _spoiled(self, conn_id: str, bad: BadMessage) -> None:
        """A worker sent a malformed message for one of our connections: fail it."""
        conn = self._conns.get(conn_id)
        if conn is not None and not conn.failed:
            self._fail(conn, 502, f"its worker sent a malformed {bad.kind} message ({bad})")
            if conn.worker is not None:  # its app must not wait for a client we let go
                gone = msg.disconnect(conn.id, 1011 if conn.websocket else None)
                self._background.run(conn.id, wire.send_patiently(self.layer, conn.worker, gone))

    async def _watchdog(self) -> None:
        """Fail stuck connections and tell our workers we are alive."""
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(self.heartbeat / 2)
            now = loop.time()
            peers: set[str] = set()
            for conn in list(self._conns.values()):
                if conn.failed:
                    continue
                if conn.worker is None:
                    if now - conn.created > self.pickup_timeout:
                        self._fail(conn, 503, "no worker picked the connection up in time")
                elif now - max(self._seen.get(conn.worker, 0.0), conn.assigned) > self.dead_after:
                    self._fail(conn, 502, f"worker {conn.worker} stopped heart-beating")
                else:
                    peers.add(conn.worker)
            for peer in peers:  # a send to an unreachable shard can take seconds:
                self._background.run(peer, self._beat(peer))  # never stall the checks
            # Join again: the membership lapses after group_expiry, and a Redis shard that
            # restarted empty forgot it (then no worker's hello would reach us, /readyz false).
            self._background.run(
                wire.PROTOCOL_GROUP, self.layer.group_add(wire.PROTOCOL_GROUP, self.reply)
            )
            wire.forget_silent(self._seen, now)

    async def _to_worker(self, worker: str, message: Message) -> bool:
        """Send to a connection's worker: batched per loop turn where the layer leaves the
        process, else at once; False if it could not be delivered (the caller fails the
        connection; a lost batched message fails it through :meth:`_lost`)."""
        if self._batcher is not None:
            self._batcher.post(worker, message)
            return True
        return await wire.send_patiently(self.layer, worker, message)

    def _lost(self, channel: str, message: Message, why: str, refused: bool) -> None:
        conn = self._conns.get(message.get(msg.CONN, ""))
        if conn is not None and not conn.failed:
            self._fail(conn, 502, f"its worker's channel {why}")

    def _beat(self, peer: str) -> Coroutine[Any, Any, None]:
        return self.layer.send_trusted(peer, msg.protocol_heartbeat(self.reply))

    def _fail(self, conn: Conn, code: int, why: str) -> None:
        conn.failed = True
        log.warning("connection %s: %s", conn.id, why)
        conn.put(msg.local(FAIL, code))

    # -- ASGI ------------------------------------------------------------------------------

    def __call__(self, scope: Scope, receive: Receive, send: Send) -> Coroutine[Any, Any, None]:
        """The ASGI 3 entry point; a plain function returning the handler's coroutine, so each
        request's task runs one coroutine less (uvicorn is told the interface: asgi3)."""
        kind = scope["type"]
        if kind == "http":
            return self._http(scope, receive, send)
        if kind == "websocket":
            return self._websocket(scope, receive, send)
        return self._lifespan(receive, send)

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while (await receive())["type"] != "lifespan.shutdown":
            await send({"type": "lifespan.startup.complete"})
        await send({"type": "lifespan.shutdown.complete"})

    def _open(self, websocket: bool) -> Conn:
        conn = Conn(self._new_id(), self._loop, websocket)
        self._conns[conn.id] = conn
        return conn

    def _new_id(self) -> str:
        return f"{self._prefix}{next(self._ids)}"

    def _open_message(
        self, conn: Conn, scope: Mapping[str, Any], body: bytes = b"", more: bool = False
    ) -> Message:
        """``k.http`` or ``k.ws``: a new connection for the work channel."""
        deadline = time.time() + self.pickup_timeout
        if conn.websocket:
            return msg.ws_open(conn.id, self.reply, wire.export_scope(scope), deadline)
        return msg.http_open(conn.id, self.reply, wire.export_scope(scope), body, more, deadline)

    async def _submit(self, message: Message) -> str | None:
        """Hand a new connection to the work channel; None if it took it, else why not."""
        try:
            await self.layer.send_trusted(wire.WORK_CHANNEL, message)
        except ChannelFull:
            return "all workers are busy"
        except MessageTooLarge:  # a head under --max-header-size, over max_message_size
            return "request head too large for the channel layer"
        except Exception:  # unreachable, or refused the write (e.g. Redis out of memory)
            log.exception("cannot send to the channel layer")
            return "channel layer unavailable"
        return None

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

    def relay_plain(self, cycle: RequestResponseCycle, http: BridgeHttpProtocol) -> None:
        """Relay a body-less request from callbacks; called by the HTTP protocol."""
        conn = PlainRequest(self._new_id(), self._loop, cycle, http, self)
        self._conns[conn.id] = conn
        http.later(self._submit_plain(conn, self._open_message(conn, cycle.scope)))

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
        consumed: wire.Consumed | None = None
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
                if consumed is None:
                    consumed = wire.Consumed()
                if consumed.one() and conn.worker is not None:
                    await self._to_worker(conn.worker, msg.ack(conn.id, consumed.count))
            elif kind == msg.PICKED:
                if pump is None:
                    pump = asyncio.create_task(self._pump_body(conn, receive, rest, more))
            elif kind == GONE:
                return status or 499, pump
            elif status:  # FAIL or APP_ERROR after the response started: uvicorn cuts it short
                return status, pump
            else:  # FAIL (watchdog: 502/503), APP_ERROR (500, or 502 from a draining worker)
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

    async def _websocket(self, scope: Scope, receive: Receive, send: Send) -> None:
        conn = self._open(True)
        reader: asyncio.Task[None] | None = None
        code = 1006
        try:
            await receive()  # websocket.connect
            why = await self._submit(self._open_message(conn, scope))
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
        consumed = wire.Consumed()
        parts: list[Any] = []
        while True:
            message = await conn.get()
            kind = message[msg.TYPE]
            if kind == msg.WS_OUT:
                parts.append(msg.frame_data(message))
                if not message[msg.MORE_FRAGMENTS]:
                    data = parts[0] if len(parts) == 1 else parts[0][:0].join(parts)
                    parts.clear()
                    key = "text" if isinstance(data, str) else "bytes"
                    await send({"type": "websocket.send", key: data})
                if consumed.one() and conn.worker is not None:
                    await self._to_worker(conn.worker, msg.ack(conn.id, consumed.count))
            elif kind == msg.WS_ACCEPT:
                accept = {"type": "websocket.accept", "subprotocol": message.get(msg.SUBPROTOCOL)}
                if message.get(msg.HEADERS):
                    accept["headers"] = message[msg.HEADERS]
                await send(accept)
                self.metrics.websockets.labels(self.role).inc()
                reader = asyncio.create_task(self._read_websocket(conn, receive))
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
                    return await replies.ws_refuse(send, code, "no worker"), reader
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
