"""The message protocol between protocol servers and workers (see docs/architecture.md).

Every message carries ``"c"``, the connection id the protocol server minted (unique across
processes because it starts with the layer's ``client_id``). Keys are one or two letters because
each one is encoded for every request. This module holds the names, the body/frame chunking and
the two small primitives both sides need: a per-connection inbox and a send window.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Iterator
from functools import partial
from typing import Any, Protocol, TypeVar

import msgpack

from layer.base import BaseChannelLayer
from layer.exceptions import ChannelFull
from layer.messages import Message

WORK_CHANNEL = "work.asgi"  # shared: every worker takes new connections from here
PROTOCOL_GROUP = "kit.protocol"  # every protocol server's reply channel: workers announce here

# protocol server -> work channel
HTTP_OPEN = (
    "k.http"  # c, r (reply channel), s (scope), b (first body chunk), m (more), d (deadline)
)
WS_OPEN = "k.ws"  # c, r, s, d
# protocol server -> worker channel
BODY = "k.body"  # c, b, m: the rest of a request body
WS_IN = "k.wsin"  # c, t or b, f (more fragments follow): a frame from the client
DISCONNECT = "k.disc"  # c, code: the client went away
# worker -> reply channel
PICKED = "k.pick"  # c, w (worker channel): a worker owns the connection (affinity)
RESPONSE = "k.resp"  # c, w, st (status), h (headers), b, m: start + first body chunk
RESPONSE_BODY = "k.rbody"  # c, b, m
WS_ACCEPT = "k.wsacc"  # c, w, sp (subprotocol), h (headers)
WS_OUT = "k.wsout"  # c, t or b, f
WS_CLOSE = "k.close"  # c, code, rs (reason)
APP_ERROR = "k.err"  # c, code (default 500): the app raised, or was cancelled at drain
# both directions
ACK = "k.ack"  # c, n: the receiver has consumed n data messages of this connection
HEARTBEAT = "k.hb"  # w or r: the sender is alive (sent to peers with open connections)
HELLO = "k.hello"  # w: a worker exists (group_send to PROTOCOL_GROUP; drives /readyz)

_pack = msgpack.Packer(use_bin_type=True, autoreset=True).pack
_unpack = partial(msgpack.unpackb, raw=False)

WINDOW = 16  # data messages in flight per connection and direction before the sender waits
ACK_EVERY = WINDOW // 2
SEND_RETRY = 0.005  # seconds between retries while a peer's channel is full

Data = TypeVar("Data", bytes, str)

_LOCAL_SCOPE_KEYS = ("state", "extensions", "app")  # objects of this process only


def pack_headers(headers: Any) -> bytes:
    """Response headers as one packed value, for the same reason as :func:`export_scope`."""
    packed: bytes = _pack(
        headers if type(headers) in (list, tuple) else [tuple(h) for h in headers]
    )
    return packed


def unpack_headers(packed: bytes) -> list[Any]:
    headers: list[Any] = _unpack(packed)
    return headers


def chunk_size(layer: BaseChannelLayer) -> int:
    """Largest body/frame slice per message: half the layer's limit leaves room for headers."""
    return max(4096, min(256 * 1024, layer.max_message_size // 2))


def export_scope(scope: dict[str, Any]) -> bytes:
    """The serialisable part of an ASGI scope (drops ``state``, ``extensions``, app objects).

    Packed here into one bytes value: the layer then validates a single leaf instead of walking
    every header, which is most of the cost of sending a request.
    """
    if scope.get("state") or "extensions" in scope or "app" in scope:
        scope = {key: value for key, value in scope.items() if key not in _LOCAL_SCOPE_KEYS}
    packed: bytes = _pack(scope)  # an empty "state" travels as {}: the worker replaces it
    return packed


def import_scope(packed: bytes) -> dict[str, Any]:
    """Rebuild a scope: msgpack turns tuples into lists; apps expect tuples for addresses."""
    data: dict[str, Any] = _unpack(packed)
    for key in ("client", "server"):
        value = data.get(key)
        if value is not None:
            data[key] = tuple(value)
    data.setdefault("headers", [])  # [[name, value], ...]: ASGI allows any iterable of pairs
    data.setdefault("extensions", {})
    data["state"] = {}
    return data


def slices(data: Data, size: int) -> Iterator[tuple[Data, bool]]:
    """``(slice, more)`` pairs covering ``data``; one empty slice for empty data."""
    if len(data) <= size:
        yield data, False
        return
    for start in range(0, len(data), size):
        yield data[start : start + size], start + size < len(data)


async def send_patiently(
    layer: BaseChannelLayer, channel: str, message: Message, give_up: float = 5.0
) -> bool:
    """Send to a peer's channel, waiting while it is full; False if it stayed full ``give_up`` s.

    Peer channels are process-specific and drained by one loop, so ``ChannelFull`` means the peer
    is momentarily behind (back-pressure), or dead — which heartbeats detect separately.
    """
    try:
        await layer.send(channel, message)
        return True
    except ChannelFull:
        pass
    loop = asyncio.get_running_loop()
    deadline = loop.time() + give_up
    while loop.time() < deadline:
        await asyncio.sleep(SEND_RETRY)
        try:
            await layer.send(channel, message)
            return True
        except ChannelFull:
            continue
    return False


class Inbox:
    """A minimal single-consumer queue (cheaper than ``asyncio.Queue`` for one message)."""

    __slots__ = ("_items", "_loop", "_waiter")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop  # given, not looked up: get_running_loop() costs a getpid() on 3.11
        self._items: deque[Message] = deque()
        self._waiter: asyncio.Future[None] | None = None

    def put(self, message: Message) -> None:
        self._items.append(message)
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def get(self) -> Message:
        while not self._items:
            self._waiter = self._loop.create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        return self._items.popleft()


class Window:
    """Sender side of per-connection flow control: at most ``WINDOW`` unacknowledged messages."""

    __slots__ = ("_acked", "_sent", "_waiter")

    def __init__(self) -> None:
        self._sent = 0
        self._acked = 0
        self._waiter: asyncio.Future[None] | None = None

    async def reserve(self) -> None:
        """Wait until one more data message may be sent, then count it."""
        while self._sent - self._acked >= WINDOW:
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        self._sent += 1

    def acked(self, count: int) -> None:
        self._acked = max(self._acked, count)
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)


class _Windowed(Protocol):
    window: Window | None


def window(holder: _Windowed) -> Window:
    """``holder``'s send window, created on first use (most connections never stream)."""
    if holder.window is None:
        holder.window = Window()
    return holder.window


class Consumed:
    """Receiver side of flow control: says when to send an ``ACK`` with the running count."""

    __slots__ = ("count",)

    def __init__(self) -> None:
        self.count = 0

    def one(self) -> bool:
        """Count a consumed data message; True when an ``ACK`` is due."""
        self.count += 1
        return self.count % ACK_EVERY == 0
