"""One connection's application instance inside a worker: ASGI ``receive``/``send`` over the layer.

The instance speaks ASGI to the app and the wire protocol to the protocol server that owns the
client. A plain HTTP request costs one message each way: ``http.response.start`` is held until
the first body arrives (or the app yields) so both travel as one ``k.resp``, and the worker only
announces itself with ``k.pick`` when the app has not answered within the worker's ``ack_delay``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, TypeVar

from layer.base import BaseChannelLayer
from layer.messages import Message
from services import messages as msg
from services import wire
from services.admission import Admission
from services.batching import Batcher, deliver
from services.held_starts import HeldStarts
from services.receiving import consumed, joined

log = logging.getLogger("layerkit.worker")

ASGIApp = Callable[[dict[str, Any], Any, Any], Awaitable[None]]

_BYTES = (bytes, bytearray, memoryview)
_STR_OR_NONE = (str, type(None))
T = TypeVar("T")


class Instance(wire.Inbox):
    """Runs the app for one HTTP request or WebSocket and relays its events; its inbox gets the
    follow-ups the worker's dispatch loop routes to it."""

    __slots__ = (
        "_buffer",
        "_first",
        "_flush",
        "_parks",
        "accepted",
        "admission",
        "batcher",
        "chunk",
        "closed",
        "consumed",
        "counted",
        "gone",
        "held",
        "id",
        "kind",
        "known",
        "layer",
        "reply",
        "scope",
        "started",
        "status",
        "takes",
        "window",
        "worker",
    )

    def __init__(
        self,
        layer: BaseChannelLayer,
        worker: str,
        chunk: int,
        message: Message,
        loop: asyncio.AbstractEventLoop,
        held: HeldStarts,
        batcher: Batcher | None,
        admission: Admission,
    ) -> None:
        super().__init__(loop)
        self.admission = admission  # told when the app waits on its client (parks)
        self.counted = True  # in the admission's counts, until the worker is done with it
        self._parks = 0  # the app's waits on its client in progress (one per task of the app)
        self.held = held
        self.batcher = batcher  # None: each message is sent (and awaited) on its own
        self.layer = layer
        self.worker = worker
        self.chunk = chunk
        self.id: str = message[msg.CONN]
        self.reply: str = message[msg.REPLY_CHANNEL]
        http = message[msg.TYPE] == msg.HTTP_OPEN
        self.kind = "http" if http else "websocket"
        self.takes = msg.HTTP_FOLLOW_UPS if http else msg.WEBSOCKET_FOLLOW_UPS
        self.scope = wire.import_scope(message[msg.SCOPE])
        self.window: wire.Window | None = None  # created when the response or frames stream
        self.consumed: wire.Consumed | None = None
        self.started = loop.time()
        self.status = 0  # HTTP status sent, or WebSocket close code
        self.accepted = False
        self.closed = False  # response complete / socket closed: later sends are dropped
        self.gone = False  # the client or its protocol server went away
        self._first: Message | None = message
        self._flush: asyncio.Task[None] | None = None
        self.known = False  # the protocol server knows which worker owns this connection
        self._buffer: list[Any] = []  # the held response start, or the fragments of a frame

    async def run(self, app: ASGIApp) -> None:
        """Run the app to completion; tell the protocol server if it failed to answer."""
        first = self._first
        assert first is not None
        if first.get(msg.MORE):
            await self.announce()  # the protocol server needs us to stream the body
        try:
            await app(self.scope, self.receive, self.send)
        except asyncio.CancelledError:  # drain grace period over: the worker is going away
            if self.kind == "http" and not self.closed:
                self.status = 502
                await self._post(msg.app_error(self.id, 502))
            raise
        except Exception:
            log.exception("application raised on %s %s", self.kind, self.scope.get("path"))
            if not self.closed:
                self.status = 500 if self.kind == "http" else 1011
                await self._post(msg.app_error(self.id))
            return
        if self.closed or self.gone:
            return
        if self.kind == "websocket":  # returned without closing: close normally (403 if unaccepted)
            await self.send({"type": "websocket.close", "code": 1000})
        else:
            log.error("application returned without completing the response to %s", self.id)
            self.status = 500
            await self._post(msg.app_error(self.id))

    def client_left(self) -> None:
        """``k.disc`` arrived: drop the app's sends from now on, and wake one waiting for acks
        that will never come (the app's next ``receive`` says the client left)."""
        self.gone = True
        if self.window is not None:
            self.window.open_wide()

    def lose_peer(self, code: int) -> None:
        """The client or its protocol server is gone: the app's next receive says so."""
        self.put(msg.disconnect(self.id, code))

    async def announce(self) -> None:
        """Send ``k.pick``: the app is slow to answer, or the request body has to stream to us."""
        self.known = True
        await self._post(msg.picked(self.id, self.worker))

    async def _post(self, message: Message) -> None:
        if self.gone:
            return
        if self.batcher is not None:
            self.batcher.post(self.reply, message)
            return
        why = await deliver(self.layer, self.reply, message)
        if why is not None:
            self.lost(why)

    def refused(self) -> None:
        """The layer refused one of the app's messages (too large): the connection fails as if
        the app had raised (the worker tells the protocol server), later sends are dropped."""
        self.status = 500 if self.kind == "http" else 1011
        self.closed = True

    def lost(self, why: str) -> None:
        """A message to the protocol server could not be delivered: stop talking to it."""
        if not self.gone:
            log.warning("reply channel %s %s; dropping %s", self.reply, why, self.id)
            self.gone = True

    # -- ASGI receive ----------------------------------------------------------------------

    async def receive(self) -> Message:
        first = self._first
        if first is not None:
            self._first = None
            if self.kind == "http":
                return {
                    "type": "http.request",
                    "body": first[msg.DATA],
                    "more_body": first[msg.MORE],
                }
            return {"type": "websocket.connect"}
        if self.closed or self.gone:
            if self.kind == "http":
                return {"type": "http.disconnect"}
            if self.closed:  # the app closed the socket; Channels waits for this to stop
                return {"type": "websocket.disconnect", "code": self.status}
        while True:
            message = await (self.get() if self._items else self._parked(self.get()))
            kind = message[msg.TYPE]
            if kind == msg.DISCONNECT:
                self.gone = True
                if self.kind == "http":
                    return {"type": "http.disconnect"}
                return {"type": "websocket.disconnect", "code": msg.code_of(message, 1005)}
            ack = consumed(self)
            if ack is not None:
                await self._post(ack)
            if kind == msg.BODY:
                body, more = message[msg.DATA], message[msg.MORE]
                return {"type": "http.request", "body": body, "more_body": more}
            data = joined(self._buffer, message)
            if data is None:
                continue
            if isinstance(data, str):
                return {"type": "websocket.receive", "text": data}
            return {"type": "websocket.receive", "bytes": data}

    # -- ASGI send -------------------------------------------------------------------------

    async def send(self, message: Message) -> None:
        kind = message["type"]
        if self.closed or self.gone:
            return
        if kind.startswith("websocket.http.") and self.kind == "websocket":
            # The denial response extension: an HTTP response instead of the handshake, relayed
            # as an HTTP response is (the protocol server hands it to uvicorn as such).
            if self.accepted:
                raise ValueError(f"{kind!r} after websocket.accept: the handshake is done")
            kind = kind[len("websocket.") :]
        if kind == "http.response.start":
            status = message["status"]
            if type(status) is not int:
                status = wire.app_value("status", status, int)  # raises, unless an int subclass
            if not 100 <= status <= 599:  # uvicorn would refuse it in the protocol server
                raise ValueError(f"ASGI key 'status' must be 100-599, got {status}")
            self.status = status
            self._buffer = [wire.app_headers(message.get("headers", []))]
            self.held.add(self)
        elif kind == "http.response.body":
            body: bytes = message.get("body", b"")
            if type(body) is not bytes:  # a snapshot: the app may reuse a bytearray
                body = bytes(wire.app_value("body", body, _BYTES))
            more: bool = message.get("more_body", False)
            if not more and self._buffer and self._flush is None and len(body) <= self.chunk:
                self.closed = True  # the common case: the whole response in one message
                await self._post(self._response(body, False))
            else:
                await self._body(body, more)
        elif kind == "websocket.send":
            await self._frame(message)
        elif kind == "websocket.accept":
            self.known = self.accepted = True
            subprotocol = wire.app_value("subprotocol", message.get("subprotocol"), _STR_OR_NONE)
            headers = wire.app_headers(message["headers"]) if message.get("headers") else None
            await self._post(msg.ws_accept(self.id, self.worker, subprotocol, headers))
        elif kind == "websocket.close":
            self.closed = True
            self.status = wire.app_value("code", message.get("code", 1000), int)
            reason = wire.app_value("reason", message.get("reason") or "", str)
            await self._post(msg.ws_close(self.id, self.status, reason))
        else:
            raise ValueError(f"unsupported ASGI message type {kind!r} for {self.kind}")

    def flush_start(self) -> None:
        """The app sent headers and then yielded: send them without waiting for a body (an SSE
        stream or a long poll must reach its client at once)."""
        if self._buffer and not self.closed and self._flush is None:
            self._flush = asyncio.ensure_future(self._stream(b"", True))

    async def _body(self, body: bytes, more: bool) -> None:
        """The app's body, after the headers :meth:`flush_start` may still be sending."""
        if self._flush is not None and not self._flush.done():
            await self._flush
        await self._stream(body, more)

    async def _stream(self, body: bytes, more: bool) -> None:
        if not more:
            self.closed = True
        for piece, tail in wire.slices(body, self.chunk):
            streaming = more or tail
            if self._buffer:
                message = self._response(piece, streaming)
            elif not piece and streaming:
                continue
            else:
                message = msg.response_body(self.id, piece, streaming)
            if streaming:
                await self._reserve()
            await self._post(message)

    def _response(self, body: bytes, more: bool) -> Message:
        """``k.resp``: the held ``http.response.start`` with the first part of the body."""
        headers = self._buffer[0]
        self._buffer = []
        self.known = True
        return msg.response(self.id, self.worker, self.status, headers, body, more)

    async def _frame(self, message: Message) -> None:
        text = message.get("text")
        pieces: Iterator[tuple[str, bool]] | Iterator[tuple[bytes, bool]]
        if text is not None:
            pieces = wire.slices(wire.app_value("text", text, str), self.chunk)
        else:
            data = bytes(wire.app_value("bytes", message.get("bytes") or b"", _BYTES))
            pieces = wire.slices(data, self.chunk)
        for piece, more in pieces:
            await self._reserve()
            await self._post(msg.frame(msg.WS_OUT, self.id, piece, more))

    # -- parking ---------------------------------------------------------------------------

    async def _reserve(self) -> None:
        """Room in the send window; parked while the client has yet to read what was sent."""
        window = wire.window(self)
        await (self._parked(window.reserve()) if window.full else window.reserve())

    async def _parked(self, waiting: Awaitable[T]) -> T:
        """Wait on the client without holding a work slot (services/admission.py): an idle
        WebSocket or a slow body or reader costs its memory, not the worker's capacity. The
        instance is parked while any of its tasks waits so (the demo chat's relay task may wait
        for window room while its main task waits in ``receive``)."""
        self._parks += 1
        if self._parks == 1 and self.counted:
            self.admission.park()
        try:
            return await waiting
        finally:
            self._parks -= 1
            if self._parks == 0 and self.counted:
                self.admission.unpark()

    def uncount(self) -> bool:
        """The worker is done with this instance; returns whether it was at work (not parked:
        an app may return leaving a task of its own waiting in ``receive``)."""
        self.counted = False
        return self._parks == 0
