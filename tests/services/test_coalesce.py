"""The protocol server's one-write transport (services/coalesce.py) on real sockets, on the
event loops the roles run (uvloop) and asyncio's own: what one loop turn writes reaches the
peer whole and in order as one write of its pieces (a large body too, including one the socket
cannot take at once), and ``close`` sends what is held before the end of the stream."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable

import pytest
import uvloop

from services.coalesce import CoalescingTransport

pytestmark = pytest.mark.timeout(60)

LOOPS: dict[str, Callable[[], asyncio.AbstractEventLoop]] = {
    "uvloop": uvloop.new_event_loop,
    "asyncio": asyncio.new_event_loop,
}


def _read_all(sock: socket.socket) -> bytes:
    chunks = []
    while chunk := sock.recv(1 << 20):
        chunks.append(chunk)
    return b"".join(chunks)


async def _written(turns: list[list[bytes | bytearray | memoryview]]) -> bytes:
    """Write each turn's pieces through a CoalescingTransport (one loop turn apart), close it,
    and return what the peer read. A ``bytearray`` is changed right after it is written: the
    bytes written are the ones it held then."""
    loop = asyncio.get_running_loop()
    ours, theirs = socket.socketpair()
    reader = loop.run_in_executor(None, _read_all, theirs)
    try:
        raw, _ = await loop.create_connection(asyncio.Protocol, sock=ours)
        transport = CoalescingTransport(raw, loop)
        for pieces in turns:
            for piece in pieces:
                transport.write(piece)
                if isinstance(piece, bytearray):
                    piece[:4] = b"XXXX"
            await asyncio.sleep(0)  # the turn ends: its pieces leave together
        transport.close()
        return await asyncio.wait_for(reader, 30)
    finally:
        theirs.close()


@pytest.mark.parametrize("loop_name", LOOPS)
def test_each_turns_pieces_arrive_whole_and_in_order(loop_name: str) -> None:
    head = b"HTTP/1.1 200 OK\r\ncontent-length: 65536\r\n\r\n"
    body = bytes(range(256)) * 256  # 64 KiB
    huge = bytearray(b"h" * (8 << 20))  # more than a socket buffer takes at once
    turns: list[list[bytes | bytearray | memoryview]] = [
        [head, body],
        [b"a", b"b", memoryview(b"cd")],
        [head, huge, b"tail"],
    ]
    expected = b"".join(bytes(piece) for pieces in turns for piece in pieces)
    loop = LOOPS[loop_name]()
    try:
        got = loop.run_until_complete(_written(turns))
    finally:
        loop.close()
    assert len(got) == len(expected)
    assert got == expected
