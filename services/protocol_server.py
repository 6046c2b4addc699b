"""The protocol server: an ASGI 3 app (hosted by uvicorn) that hands every connection to a worker.

Each HTTP request or WebSocket becomes one ``k.http``/``k.ws`` message on the shared work
channel; whatever the worker sends back arrives on this process's single reply channel and is
routed to the connection by its id. A watchdog fails connections no worker picked up in time
(503 / close 1013) and connections whose worker stopped heart-beating (502 / close 1011).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from typing import Any

from layer.base import BaseChannelLayer
from layer.messages import Message
from services import batching, wire
from services import messages as msg
from services.admission import MAX_CONNECTIONS
from services.background import OneInFlight, Vital
from services.http_relay import HttpRelay
from services.liveness import Liveness
from services.messages import BadMessage
from services.metrics import Metrics
from services.relay import PICKUP_TIMEOUT, Receive, Scope, Send
from services.ws_relay import WebSocketRelay

log = logging.getLogger("layerkit.protocol")


class ProtocolServer(HttpRelay, WebSocketRelay):
    """Forwards HTTP and WebSocket connections over the layer and relays the answers: the
    relays (services/http_relay.py, services/ws_relay.py) plus the loops that route what
    workers send back and watch that they are alive."""

    def __init__(
        self,
        layer: BaseChannelLayer,
        metrics: Metrics,
        *,
        pickup_timeout: float = PICKUP_TIMEOUT,
        heartbeat: float = 1.0,
        max_connections: int = MAX_CONNECTIONS,
    ) -> None:
        super().__init__(layer, metrics, pickup_timeout, max_connections)
        self.heartbeat = heartbeat
        self.peers = Liveness(heartbeat / 2, 3 * heartbeat)  # the workers serving us
        self.worker_seen = 0.0  # loop time a worker last spoke to us (drives /readyz)
        self._tasks: list[asyncio.Task[None]] = []
        self._background = OneInFlight(log)  # heartbeats and re-joins
        self.vital = Vital(log)  # the loops: if one dies, /healthz fails
        self._stopping = False
        self._rejects = batching.Rejects(self.role, metrics, log, self._spoiled)
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
        """A worker that can take our work spoke to us recently: requests have somewhere to go."""
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
            worker = message[msg.WORKER]
            # A hello is a group send: under layer.local it also comes from other hosts'
            # workers, which never see our work channel. Only ours make us ready.
            if self.layer.shares_normal_channels(worker):
                self.worker_seen = self.peers.seen[worker] = self._loop.time()
            return
        conn = self._conns.get(message[msg.CONN])
        if conn is None:
            return  # a late answer for a connection that already ended
        if kind not in (msg.WEBSOCKET_REPLIES if conn.websocket else msg.HTTP_REPLIES):
            denial = conn.websocket and kind in msg.WEBSOCKET_DENIAL
            if not denial or conn.accepted:  # a denial is a reply only before the accept
                if denial:
                    what = "WebSocket it accepted"
                else:
                    what = "WebSocket" if conn.websocket else "HTTP request"
                wrong = BadMessage("wrong_connection", f"not for a {what}", kind, conn.id)
                self._rejects(wrong, message, self.reply)
                return
        elif kind == msg.WS_ACCEPT:
            conn.accepted = True
        if conn.worker is None and kind in msg.CLAIMS:
            worker = message[msg.WORKER]
            conn.worker = worker
            conn.assigned = self.worker_seen = self.peers.seen[worker] = self._loop.time()
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
            now = self.peers.tick(loop.time())
            peers: set[str] = set()
            for conn in list(self._conns.values()):
                if conn.failed:
                    continue
                if conn.worker is None:
                    if self.peers.awake_since(conn.created, now) > self.pickup_timeout:
                        self._fail(conn, 503, "no worker picked the connection up in time")
                elif wire.same_process(self.layer, conn.worker):
                    continue
                elif self.peers.dead(conn.worker, conn.assigned, now):
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

    def _beat(self, peer: str) -> Coroutine[Any, Any, None]:
        return self.layer.send_trusted(peer, msg.protocol_heartbeat(self.reply))

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
