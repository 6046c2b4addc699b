"""The protocol server: an ASGI 3 app (hosted by uvicorn) that hands every connection to a worker.

Each HTTP request or WebSocket becomes one ``k.http``/``k.ws`` message on the shared work
channel; whatever the worker sends back arrives on this process's single reply channel and is
routed to the connection by its id (the peer core, services/peer.py). Its liveness checks fail
connections no worker picked up in time (503 / close 1013) and connections whose worker stopped
heart-beating (502 / close 1011).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from typing import Any

from layer.base import BaseChannelLayer
from layer.messages import Message
from services import messages as msg
from services import wire
from services.admission import MAX_CONNECTIONS
from services.connection import Conn
from services.http_relay import HttpRelay
from services.messages import BadMessage
from services.metrics import Metrics
from services.relay import PICKUP_TIMEOUT, Receive, Scope, Send
from services.ws_relay import WebSocketRelay

log = logging.getLogger("layerkit.protocol")


class ProtocolServer(HttpRelay, WebSocketRelay):
    """Forwards HTTP and WebSocket connections over the layer and relays the answers: the
    relays (services/http_relay.py, services/ws_relay.py) on the peer core (services/peer.py),
    told here what workers' messages mean and when a connection has waited too long."""

    def __init__(
        self,
        layer: BaseChannelLayer,
        metrics: Metrics,
        *,
        pickup_timeout: float = PICKUP_TIMEOUT,
        heartbeat: float = 1.0,
        max_connections: int = MAX_CONNECTIONS,
    ) -> None:
        super().__init__(layer, metrics, pickup_timeout, max_connections, heartbeat)
        self.worker_seen = 0.0  # loop time a worker last spoke to us (drives /readyz)

    # -- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        await self._open_channel()
        self._prefix = self.layer.client_id + "."
        await self.layer.group_add(wire.PROTOCOL_GROUP, self.channel)
        self._run()
        log.info("protocol server reply channel %s", self.channel)

    async def stop(self) -> None:
        await super().stop()
        try:
            await self.layer.group_discard(wire.PROTOCOL_GROUP, self.channel)
        except Exception:  # the layer may already be gone; nothing to clean then
            log.debug("group_discard at stop failed", exc_info=True)

    def ready(self) -> bool:
        """A worker that can take our work spoke to us recently: requests have somewhere to go."""
        return asyncio.get_running_loop().time() - self.worker_seen < 10 * self.heartbeat

    async def _probe(self) -> None:
        waiting = sum(1 for conn in self._conns.values() if conn.worker is None)
        self.metrics.inflight.labels(self.role, "waiting").set(waiting)
        self.metrics.inflight.labels(self.role, "assigned").set(len(self._conns) - waiting)

    # -- what workers send (services/peer.py routes it) ------------------------------------

    def _heard(self, message: Message) -> None:
        worker = message[msg.WORKER]
        # A hello is a group send: under layer.local it also comes from other hosts'
        # workers, which never see our work channel. Only ours make us ready.
        if self.layer.shares_normal_channels(worker):
            self.worker_seen = self.peers.seen[worker] = self._loop.time()

    def _unexpected(self, conn: Conn, kind: str) -> str | None:
        if conn.websocket and kind in msg.WEBSOCKET_DENIAL:
            # a denial is a reply only before the accept
            return "WebSocket it accepted" if conn.accepted else None
        return "WebSocket" if conn.websocket else "HTTP request"

    def _deliver(self, conn: Conn, kind: str, message: Message) -> None:
        if kind == msg.WS_ACCEPT:
            conn.accepted = True
        if conn.worker is None and kind in msg.CLAIMS:
            worker = message[msg.WORKER]
            conn.worker = worker
            conn.assigned = self.worker_seen = self.peers.seen[worker] = self._loop.time()
            self._depends_on(worker)
        conn.put(message)

    def _spoiled(self, conn_id: str, bad: BadMessage) -> None:
        """A worker sent a malformed message for one of our connections: fail it."""
        conn = self._conns.get(conn_id)
        if conn is not None and not conn.failed:
            self._fail(conn, 502, f"its worker sent a malformed {bad.kind} message ({bad})")
            if conn.worker is not None:  # its app must not wait for a client we let go
                gone = msg.disconnect(conn.id, 1011 if conn.websocket else None)
                self._background.run(conn.id, wire.send_patiently(self.layer, conn.worker, gone))

    # -- liveness (services/peer.py checks every half heartbeat) ---------------------------

    def _watched(self, conn: Conn, now: float) -> tuple[str, float] | None:
        if conn.failed:
            return None
        if conn.worker is None:  # fail it if no worker took it in time
            if self.peers.awake_since(conn.created, now) > self.pickup_timeout:
                self._fail(conn, 503, "no worker picked the connection up in time")
            return None
        return conn.worker, conn.assigned

    def _lose(self, conn: Conn, peer: str) -> None:
        self._fail(conn, 502, f"worker {peer} stopped heart-beating")

    def _heartbeat(self) -> Message:
        return msg.protocol_heartbeat(self.channel)

    def _tick(self, ticks: int) -> None:
        # Join again: the membership lapses after group_expiry, and a Redis shard that
        # restarted empty forgot it (then no worker's hello would reach us, /readyz false).
        if ticks:  # start() has just joined
            join = self.layer.group_add(wire.PROTOCOL_GROUP, self.channel)
            self._background.run(wire.PROTOCOL_GROUP, join)

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
