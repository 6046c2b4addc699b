"""The message protocol between protocol servers and workers (see docs/architecture.md).

Every message carries ``"c"``, the connection id the protocol server minted (unique across
processes because it starts with the layer's ``client_id``). Keys are one or two letters because
each one is encoded for every request. This module holds the names, the body/frame chunking and
the two small primitives both sides need: a per-connection inbox and a send window.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Iterator, Mapping
from operator import itemgetter
from typing import Any, Protocol, TypeVar

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
BATCH = "k.batch"  # ms: messages for one peer posted in one loop turn, in order (batching.py)
HEARTBEAT = "k.hb"  # w or r: the sender is alive (sent to peers with open connections)
HELLO = "k.hello"  # w: a worker exists (group_send to PROTOCOL_GROUP; drives /readyz)

WINDOW = 16  # data messages in flight per connection and direction before the sender waits
ACK_EVERY = WINDOW // 2
SEND_RETRY = 0.005  # seconds between retries while a peer's channel is full

Data = TypeVar("Data", bytes, str)

_LOCAL_SCOPE_KEYS = ("state", "extensions", "app")  # objects of this process only
# The keys uvicorn puts in a scope, in a fixed order: such a scope travels as the list of their
# values, which msgpack packs and unpacks several times faster than a map of str keys.
_SCOPE_KEYS = {
    "http": (
        "type", "asgi", "http_version", "scheme", "server", "client", "root_path",
        "method", "path", "raw_path", "query_string", "headers",
    ),
    "websocket": (
        "type", "asgi", "http_version", "scheme", "server", "client", "root_path",
        "path", "raw_path", "query_string", "headers", "subprotocols",
    ),
}  # fmt: skip
_SCOPE_SHAPES = {kind: (itemgetter(*keys), len(keys)) for kind, keys in _SCOPE_KEYS.items()}


FORGET_PEER_AFTER = 60.0  # seconds: a peer silent this long leaves the last-seen table


def forget_silent(seen: dict[str, float], now: float) -> None:
    """Drop peers of a last-seen table (peer -> loop time) not heard from for a minute, so
    the table of a long-running process does not grow with every peer that ever came and went."""
    for peer, last in list(seen.items()):
        if now - last > FORGET_PEER_AFTER:
            del seen[peer]


def chunk_size(layer: BaseChannelLayer) -> int:
    """Largest body/frame slice per message: half the layer's limit leaves room for headers."""
    return max(4096, min(256 * 1024, layer.max_message_size // 2))


def export_scope(scope: Mapping[str, Any]) -> Any:
    """The serialisable part of an ASGI scope (drops ``state``, ``extensions``, app objects).

    A scope with exactly uvicorn's keys becomes a tuple of their values; any other scope a map.
    """
    shape = _SCOPE_SHAPES.get(scope["type"])
    if shape is not None:
        values, size = shape
        extra = len(scope) - size
        if extra == ("state" in scope) + ("extensions" in scope) + ("app" in scope):
            try:
                return values(scope)
            except KeyError:  # as many keys, but not the same ones
                pass
    return {key: value for key, value in scope.items() if key not in _LOCAL_SCOPE_KEYS}


def import_scope(data: Any) -> dict[str, Any]:
    """Rebuild a scope: msgpack turns tuples into lists; apps expect tuples for addresses."""
    scope: dict[str, Any]
    if type(data) is list or type(data) is tuple:  # malformed: KeyError or ValueError
        scope = dict(zip(_SCOPE_KEYS[data[0]], data, strict=True))
    else:
        scope = data
        scope.setdefault("headers", [])  # [[name, value], ...]: any iterable of pairs
    client, server = scope.get("client"), scope.get("server")
    if client is not None and type(client) is not tuple:
        scope["client"] = tuple(client)
    if server is not None and type(server) is not tuple:
        scope["server"] = tuple(server)
    scope["extensions"] = {}
    scope["state"] = {}
    return scope


def app_headers(headers: Any) -> list[tuple[bytes, bytes]]:
    """A copy of the app's headers as byte-string pairs; ``TypeError`` naming a bad one.

    Checked here because the services send their messages unvalidated (``send_trusted``), and
    copied because an in-process layer hands the message over without encoding it.
    """
    pairs = []
    for pair in headers:
        if len(pair) != 2 or not isinstance(pair[0], bytes) or not isinstance(pair[1], bytes):
            raise TypeError(f"headers must be [name, value] pairs of byte strings, got {pair!r}")
        pairs.append((pair[0], pair[1]))
    return pairs


def app_value(name: str, value: Any, kind: type | tuple[type, ...]) -> Any:
    """``value`` if it is a ``kind``, else ``TypeError`` naming the ASGI key."""
    if not isinstance(value, kind):
        kinds = kind if isinstance(kind, tuple) else (kind,)
        wanted = " or ".join("None" if k is type(None) else k.__name__ for k in kinds)
        raise TypeError(f"ASGI key {name!r} must be {wanted}, got {type(value).__name__}")
    return value


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
        await layer.send_trusted(channel, message)
        return True
    except ChannelFull:
        pass
    loop = asyncio.get_running_loop()
    deadline = loop.time() + give_up
    while loop.time() < deadline:
        await asyncio.sleep(SEND_RETRY)
        try:
            await layer.send_trusted(channel, message)
            return True
        except ChannelFull:
            continue
    return False


class Inbox:
    """A single-consumer queue that a connection object is (cheaper than ``asyncio.Queue``).

    A message for a consumer already waiting goes straight into its future; the queue itself
    is only made for a second message (most connections only ever get one).
    """

    __slots__ = ("_items", "_waiter", "loop")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop  # given, not looked up: get_running_loop() costs a getpid() on 3.11
        self._items: deque[Message] | None = None
        self._waiter: asyncio.Future[Message] | None = None

    def put(self, message: Message) -> None:
        waiter = self._waiter
        if waiter is not None:
            self._waiter = None
            if not waiter.done():  # a cancelled get leaves a done waiter behind
                waiter.set_result(message)
                return
        if self._items is None:
            self._items = deque()
        self._items.append(message)

    async def get(self) -> Message:
        if self._items:
            return self._items.popleft()
        waiter: asyncio.Future[Message] = self.loop.create_future()
        self._waiter = waiter
        try:
            return await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():  # handed over, then cancelled
                if self._items is None:
                    self._items = deque()
                self._items.appendleft(waiter.result())
            raise


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

    def open_wide(self) -> None:
        """The receiver is gone: never wait again (whatever is sent now is dropped anyway)."""
        self.acked(1 << 62)

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
