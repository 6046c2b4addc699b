"""Commands on a raw redis-py connection, below redis-py's command API: RESP-encoded here and
written in one synchronous call per batch (redis-py's ``send_packed_command`` wraps each write
in ``wait_for``, a task per write on Python 3.11). The connection's stream is reached through
``layer/redis/_compat.py`` only.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from redis.asyncio.connection import AbstractConnection

from layer.redis._compat import stream_of, writer_of
from layer.redis.shard_errors import ShardUnavailable

Arg = bytes | str | int | float

_pack_command: Callable[[tuple[Arg, ...]], bytes] | None
try:
    from hiredis import pack_command as _pack_command  # type: ignore[assignment]
except ImportError:  # pragma: no cover - hiredis comes with the redis extra
    _pack_command = None


def pack(commands: Sequence[Sequence[Arg]]) -> list[bytes]:
    """RESP-encode ``commands`` (redis-py's packer cost a third of a send's CPU time; hiredis's
    C packer is 3x faster than this Python one, which stays as the fallback)."""
    if _pack_command is not None:
        return [_pack_command(tuple(args)) for args in commands]
    out: list[bytes] = []
    append = out.append
    for args in commands:
        append(b"*%d\r\n" % len(args))
        for arg in args:
            if isinstance(arg, bytes):
                data = arg
            elif isinstance(arg, str):
                data = arg.encode()
            elif isinstance(arg, int):
                data = b"%d" % arg
            else:
                data = repr(arg).encode()
            if len(data) > 4096:  # large payloads are not copied into a header string
                out += (b"$%d\r\n" % len(data), data, b"\r\n")
            else:
                append(b"$%d\r\n%s\r\n" % (len(data), data))
    return out


def write(conn: AbstractConnection, commands: Sequence[Sequence[Arg]]) -> None:
    """Write ``commands`` in one go (redis-py's ``send_packed_command`` wraps each write in
    ``wait_for``, a task per write on Python 3.11; a batch here is one synchronous call)."""
    writer = writer_of(conn)
    if writer is None:
        raise ShardUnavailable("connection closed")
    writer.writelines(pack(commands))


def alive(conn: AbstractConnection | None) -> bool:
    """Connected, and the server has not closed or reset the connection (seen even while
    idle: the transport keeps reading, so a restarted server's close, or a reset, is noticed
    before the next write)."""
    stream = stream_of(conn)
    return stream is not None and not stream.at_eof() and stream.exception() is None
