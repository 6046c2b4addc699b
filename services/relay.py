"""What the protocol server's HTTP and WebSocket relays share: the connection table (a
:class:`~services.peer.Peer` of the workers), and the hand-over of a new connection to the work
channel, of its follow-ups to its worker and of acks for what its client took.

services/protocol_server.py builds on it (with services/http_relay.py and
services/ws_relay.py), and says how the peer core's loops treat workers.
"""

from __future__ import annotations

import itertools
import logging
import time
from collections.abc import Mapping
from typing import Any

from layer.base import BaseChannelLayer
from layer.exceptions import ChannelFull, MessageTooLarge
from layer.logs import Throttled
from layer.messages import Message
from services import messages as msg
from services import wire
from services.connection import Conn
from services.messages import FAIL
from services.metrics import Metrics
from services.peer import Peer
from services.receiving import consumed
from services.waiting_room import WaitingRoom

log = logging.getLogger("layerkit.protocol")
_log = Throttled(log)

Scope = dict[str, Any]
Receive = Any
Send = Any


# Seconds a new connection waits for a worker to take it before 503 / close 1013. Long enough
# for a burst: every client of a chat reconnecting at once after a rollout is thousands of
# handshakes, worked off at ~1,000/s by one worker on two cores (docs/architecture.md).
PICKUP_TIMEOUT = 15.0


class Relay(Peer[Conn]):
    """The connections of one protocol server, and how they reach the layer."""

    role = "protocol"
    logger = log
    prefix = "proto"
    takes = msg.TO_PROTOCOL
    beats = frozenset({msg.HEARTBEAT, msg.HELLO})

    def __init__(
        self,
        layer: BaseChannelLayer,
        metrics: Metrics,
        pickup_timeout: float,
        max_connections: int,
        heartbeat: float,
    ) -> None:
        super().__init__(layer, metrics, heartbeat, heartbeat / 2)  # the workers serving us
        self.pickup_timeout = pickup_timeout
        self.max_connections = max_connections  # requests in flight and WebSockets, together
        self.chunk = wire.chunk_size(layer)
        self._waiting = WaitingRoom(layer)
        self._ids = itertools.count()
        self._prefix = ""

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
            return msg.ws_open(conn.id, self.channel, wire.export_scope(scope), deadline)
        return msg.http_open(conn.id, self.channel, wire.export_scope(scope), body, more, deadline)

    async def _submit(self, message: Message, patient_until: float | None = None) -> str | None:
        """Hand a new connection (already in the table) to the work channel; None if it took
        it, else why not. With ``patient_until`` (loop time: WebSockets), a full channel is
        waited on (services/waiting_room.py); else it is refused at once."""
        if len(self._conns) > self.max_connections:
            self.metrics.limit_reached(self.role, "connections")
            _log(
                "connections", logging.WARNING,
                "refusing new connections (503 / close 1013): %d open, --max-connections %d",
                len(self._conns) - 1, self.max_connections,
            )  # fmt: skip
            return "server at its connection limit"
        try:
            if patient_until is None:
                await self.layer.send_trusted(wire.WORK_CHANNEL, message)
            elif not await self._waiting.send(message, patient_until):
                return "all workers are busy"
        except ChannelFull:
            return "all workers are busy"
        except MessageTooLarge:  # a head under --max-header-size, over max_message_size
            return "request head too large for the channel layer"
        except Exception:  # unreachable, or refused the write (e.g. Redis out of memory)
            log.exception("cannot send to the channel layer")
            return "channel layer unavailable"
        return None

    async def _to_worker(self, worker: str, message: Message) -> bool:
        """Send to a connection's worker: batched per loop turn where the layer leaves the
        process, else at once; False if it could not be delivered (the caller fails the
        connection; a lost batched message fails it through :meth:`_lost`)."""
        if self._batcher is not None:
            self._batcher.post(worker, message)
            return True
        return await wire.send_patiently(self.layer, worker, message)

    async def _consumed(self, conn: Conn) -> None:
        """The client took one data message of the worker's: ack if due."""
        ack = consumed(conn)
        if ack is not None and conn.worker is not None:
            await self._to_worker(conn.worker, ack)

    def _lost(self, channel: str, message: Message, why: str, refused: bool) -> None:
        conn = self._conns.get(message.get(msg.CONN, ""))
        if conn is not None and not conn.failed:
            self._fail(conn, 502, f"its worker's channel {why}")

    def _fail(self, conn: Conn, code: int, why: str) -> None:
        conn.failed = True
        log.warning("connection %s: %s", conn.id, why)
        conn.put(msg.local(FAIL, code))
