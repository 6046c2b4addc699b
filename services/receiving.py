"""The receiving end of a connection's stream, on either side: the protocol server receiving a
response or frames from the worker, the worker (its app) receiving a request body or frames.

Both count what was consumed and owe the sender a ``k.ack`` every ``wire.ACK_EVERY`` data
messages (the sender's window, services/wire.py), and both join a WebSocket message sent in
fragments (a frame larger than the layer's message size) before handing it on.
"""

from __future__ import annotations

from typing import Any, Protocol

from layer.messages import Message
from services import messages as msg
from services import wire


class _Acking(Protocol):
    id: str
    consumed: wire.Consumed | None


def consumed(conn: _Acking) -> Message | None:
    """Count one data message ``conn`` consumed; the ``k.ack`` to send now, if one is due."""
    counter = conn.consumed
    if counter is None:  # made on first use: most connections never stream
        counter = conn.consumed = wire.Consumed()
    if counter.one():
        return msg.ack(conn.id, counter.count)
    return None


def joined(parts: list[Any], message: Message) -> Any:
    """Take a ``k.wsin``/``k.wsout`` into ``parts`` (the fragments of its frame so far): the
    whole frame's text or bytes once its last fragment came (``parts`` emptied), else None."""
    data = msg.frame_data(message)
    if message[msg.MORE_FRAGMENTS]:
        parts.append(data)
        return None
    if not parts:
        return data
    parts.append(data)
    whole = data[:0].join(parts)
    parts.clear()
    return whole
