"""uvicorn's httptools protocol with each connection's writes coalesced per event-loop turn.

A response reaches the protocol server as one message (``k.resp``: status, headers, body), but
ASGI hands it to uvicorn as two events, and uvicorn writes each to the socket at once: two
``send`` syscalls and two TCP segments for one small response. On loopback a syscall that
wakes the client costs more than the rest of the request, so the transport below holds what is
written during one loop turn and writes it in one call at the end of the turn (the way Node
writes a response's head with its first chunk): ``writelines``, one ``writev`` on uvloop, so a
large body is not copied into a joined buffer first (a 64 KiB copy per response). uvicorn's
HTTP handling is untouched: it still builds, validates and frames every response; only when
the bytes reach the socket changes, never their order. WebSocket connections upgraded from
such a connection keep the transport, so a burst of frames sent in one turn goes out together
too.
"""

from __future__ import annotations

import asyncio
from typing import Any

from services.uvicorn_bridge import HttpProtocol


class CoalescingTransport(asyncio.Transport):
    """Wraps a transport: writes of one loop turn reach it as one ``write`` at the turn's end.

    Everything that ends or inspects the stream (``close``, ``write_eof``, buffer sizes) sees
    the held bytes first, so flow control and shutdown behave as without it.
    """

    __slots__ = ("_held", "_loop", "_transport")

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__()
        self._transport = transport
        self._loop = loop
        self._held: list[bytes] = []

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if not data:
            return
        held = self._held
        if not held:
            self._loop.call_soon(self.flush)
        held.append(bytes(data) if type(data) is not bytes else data)

    def writelines(self, list_of_data: Any) -> None:
        for data in list_of_data:
            self.write(data)

    def flush(self) -> None:
        """Write what this turn held (no-op if nothing is held or the stream is closing)."""
        held = self._held
        if not held:
            return
        self._held = []
        if not self._transport.is_closing():
            self._transport.writelines(held)

    def write_eof(self) -> None:
        self.flush()
        self._transport.write_eof()

    def can_write_eof(self) -> bool:
        return self._transport.can_write_eof()

    def close(self) -> None:
        self.flush()
        self._transport.close()

    def abort(self) -> None:
        self._held = []
        self._transport.abort()

    def is_closing(self) -> bool:
        return self._transport.is_closing()

    def get_write_buffer_size(self) -> int:
        return self._transport.get_write_buffer_size() + sum(map(len, self._held))

    def get_write_buffer_limits(self) -> tuple[int, int]:
        return self._transport.get_write_buffer_limits()

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        self._transport.set_write_buffer_limits(high, low)

    def pause_reading(self) -> None:
        self._transport.pause_reading()

    def resume_reading(self) -> None:
        self._transport.resume_reading()

    def is_reading(self) -> bool:
        return self._transport.is_reading()

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self._transport.set_protocol(protocol)

    def get_protocol(self) -> asyncio.BaseProtocol:
        return self._transport.get_protocol()

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self._transport.get_extra_info(name, default)


class CoalescingHttpToolsProtocol(HttpProtocol):
    """uvicorn's httptools HTTP/1.1 protocol on a :class:`CoalescingTransport`."""

    def wrap_transport(self, transport: asyncio.Transport) -> asyncio.Transport:
        return CoalescingTransport(super().wrap_transport(transport), self.loop)
