"""Limits on what an HTTP client can make the protocol server hold, enforced where bytes arrive.

uvicorn's httptools protocol reads a request head for as long as the client sends one
(httptools joins a header's pieces by copying: 10 clients sending 20 MB of header took the
protocol server from 72 to 326 MB, and what fit in a message went on into the layer), waits for
ever on a head or a body that stalls (slowloris), and takes a body of any size. The protocol
below counts a head's bytes *before* the parser sees them and times heads and stalled bodies,
answering as nginx does: 431, 408, 413. A refused request never reaches the protocol server's
ASGI app, so nothing over a limit enters the layer; a request whose body breaks a limit after
it was handed on is cut off (its worker hears ``k.disc``). WebSocket messages are limited by
uvicorn's own WebSocket protocol (``ws_max_size``, close 1009) and keep-alive by uvicorn's
timer; both take their values from :class:`Limits` too (services/runner.py).

An error answer is followed by a *lingering close*: the rest of what the client sends is read
and dropped for up to :data:`LINGER` seconds after our side of the stream is shut, so the
client reads the answer rather than a reset (closing with unread input sends an RST).
"""

from __future__ import annotations

import asyncio
import http
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, ClassVar

from layer.logs import Throttled
from services import uvicorn_bridge as bridge
from services.coalesce import CoalescingHttpToolsProtocol

LINGER = 2.0  # seconds an error answer's connection keeps draining its client before closing

_log = Throttled(logging.getLogger("layerkit.protocol"))


@dataclass(frozen=True)
class Limits:
    """The protocol server's limits on clients (``layerkit --help`` names their options)."""

    max_header_size: int = 64 * 1024  # request line + headers, bytes: 431 above
    header_timeout: float = 60.0  # seconds to receive a whole head: 408 (an idle new connection
    # is closed silently)
    body_timeout: float = 60.0  # seconds a request body may stall: 408 (close if answering)
    max_body_size: int = 0  # request body bytes, 0: no limit: 413
    keep_alive_timeout: float = 5.0  # idle seconds between requests on a connection
    max_ws_message: int = 16 * 1024 * 1024  # WebSocket message bytes: close 1009


def declared_length(headers: Iterable[tuple[bytes, bytes]]) -> int | None:
    """The body length (lower-cased) headers announce: 0 if none, None if chunked."""
    for name, value in headers:
        if name == b"content-length":
            return int(value) if value.isdigit() else None  # llhttp refused anything else
        if name == b"transfer-encoding":
            return None
    return 0


def _answer(status: int) -> bytes:
    phrase = http.HTTPStatus(status).phrase
    body = f"{phrase.lower()}\n".encode()
    return (
        f"HTTP/1.1 {status} {phrase}\r\ncontent-type: text/plain; charset=utf-8\r\n"
        f"content-length: {len(body)}\r\nconnection: close\r\n\r\n"
    ).encode() + body


_ANSWERS = {status: _answer(status) for status in (408, 413, 431)}


class LimitedHttpToolsProtocol(CoalescingHttpToolsProtocol):
    """uvicorn's HTTP/1.1 protocol with :class:`Limits`; :meth:`bound` makes one with values."""

    limits: ClassVar[Limits] = Limits()

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.set_keep_alive_timeout(self.limits.keep_alive_timeout)
        # Bytes the head being read may still take; None while a body (or nothing) is read.
        self._head_room: int | None = self.limits.max_header_size
        self._body_left: int | None = None  # with max_body_size: what the body may still take
        self._in_body = False  # a body is expected and not yet whole
        self._body_read = 0.0  # loop time of the last read while a body is expected
        self._timer: asyncio.TimerHandle | None = None  # the head, body or linger clock
        self._done = False  # refused (lingering) or upgraded: drop whatever arrives

    @classmethod
    def bound(cls, limits: Limits, refused: Callable[[int], None]) -> type[Any]:
        """This protocol with ``limits``; ``refused(status)`` counts each refusal."""
        return type(cls.__name__, (cls,), {"limits": limits, "refused": staticmethod(refused)})

    def refused(self, status: int) -> None:
        """Count one refusal (replaced by :meth:`bound`)."""

    # -- where the bytes arrive ------------------------------------------------------------

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._timer = self.loop.call_later(self.limits.header_timeout, self._head_timed_out)

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_clock()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        while not self._done:
            room = self._head_room
            if room is None or len(data) <= room:
                if room is not None:
                    self._head_room = room - len(data)
                elif self._in_body:
                    self._body_read = self.loop.time()
                super().data_received(data)
                if self._timer is None and not self._done:
                    self._start_clock()
                return
            # Past the room left: feed only up to it, then see whether the head ended there.
            self._head_room = 0
            super().data_received(data[:room])
            if self.transport.is_closing():
                return
            if self._head_room == 0:
                limit = self.limits.max_header_size
                self._refuse(431, "its request head is over %d bytes", limit)
                return
            data = data[room:]

    def _start_clock(self) -> None:
        """After a read: time a head begun but not whole, or a body expected but not whole."""
        if self._head_room is not None:
            if self._head_room < self.limits.max_header_size:
                self._timer = self.loop.call_later(self.limits.header_timeout, self._head_timed_out)
        elif self._in_body:
            self._timer = self.loop.call_later(self.limits.body_timeout, self._body_timed_out)

    def _stop_clock(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    # -- parser callbacks ------------------------------------------------------------------

    def on_headers_complete(self) -> None:
        if self._done:
            return
        self._head_room = None
        self._stop_clock()
        limit = self.limits.max_body_size
        if limit:
            length = declared_length(self.request_headers())
            if length is not None and length > limit:
                self._refuse(413, "its request body of %d bytes is over %d", length, limit)
                return
            self._body_left = limit
        super().on_headers_complete()
        self._in_body = not self.upgrading()

    def on_body(self, body: bytes) -> None:
        if self._done:
            return
        left = self._body_left
        if left is not None:
            self._body_left = left = left - len(body)
            if left < 0:
                limit = self.limits.max_body_size
                self._refuse(413, "its request body is over %d bytes", limit, current=True)
                return
        super().on_body(body)

    def on_message_complete(self) -> None:
        if self._done:
            return
        super().on_message_complete()
        self._in_body = False
        self._body_left = None
        self._head_room = self.limits.max_header_size
        self._stop_clock()

    def handle_websocket_upgrade(self) -> None:
        self._done = True  # the WebSocket protocol reads from now on
        self._stop_clock()
        super().handle_websocket_upgrade()

    # -- the clocks ------------------------------------------------------------------------

    def _head_timed_out(self) -> None:
        self._timer = None
        self._refuse(408, "no whole request head within %g s", self.limits.header_timeout)

    def _body_timed_out(self) -> None:
        self._timer = None
        if not self._in_body or self._done:
            return
        now = self.loop.time()
        if self.reading_paused():  # we stopped reading (backpressure): not the client's stall
            self._body_read = now
        timeout = self.limits.body_timeout
        idle = now - self._body_read
        if idle < timeout:
            self._timer = self.loop.call_later(timeout - idle, self._body_timed_out)
        else:
            self._refuse(408, "its request body stalled for %g s", timeout, current=True)

    # -- refusing --------------------------------------------------------------------------

    def _refuse(self, status: int, why: str, *args: object, current: bool = False) -> None:
        """Answer ``status`` and close (a lingering close), or only close when an answer could
        not be read as one: to a connection that never asked, or while another answer is due.
        ``current``: the request whose ASGI cycle runs broke the limit (its relay hears a
        disconnect), else one not handed on yet."""
        self._done = True
        self._stop_clock()
        self.refused(status)
        answer = self._head_room != self.limits.max_header_size  # else nothing was asked
        cycle = self.current_cycle()
        if cycle is not None:
            started, complete = bridge.response_state(cycle)
            if not complete:
                answer = answer and current and not started
                bridge.cut_off(cycle)  # its relay's receive says http.disconnect
        peer = self.peer()
        client = "{}:{}".format(*peer) if peer else "a client"
        _log(f"refused-{status}", logging.WARNING, "refused %s (%s): " + why, client,
             status if answer else f"{status}, closed without an answer", *args)  # fmt: skip
        if not answer:
            self.transport.close()
            return
        self.transport.write(_ANSWERS[status])
        if not self.transport.can_write_eof():
            self.transport.close()
            return
        self.transport.write_eof()
        self.resume_reading()  # drain the client until it closes or LINGER passes
        self._timer = self.loop.call_later(LINGER, self.transport.close)
