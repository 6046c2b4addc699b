"""What protocol servers and workers share besides the messages (services/messages.py): the
channel names, the scope's wire form, body/frame chunking, and the two small primitives both
sides need: a per-connection inbox and a send window (see docs/architecture.md).
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
_SERVER, _CLIENT = _SCOPE_KEYS["http"].index("server"), _SCOPE_KEYS["http"].index("client")
assert _SCOPE_KEYS["websocket"].index("client") == _CLIENT
_PAIR = frozenset({list, tuple})


def same_process(layer: BaseChannelLayer, channel: str) -> bool:
    """``channel`` was made by ``layer`` itself: in combined mode the protocol server and the
    worker share one layer, and a peer in the same process cannot die alone, so its silence (a
    loop busy past the heartbeat deadline, e.g. broadcasting to thousands of WebSockets) must
    not make either side drop the other's connections."""
    return channel.startswith(layer.client_id + "!", channel.find(".") + 1)


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


def _scope_builder(kind: str) -> Any:
    """``import_scope`` of a ``kind`` scope's list form as one dict display (a compiled
    function): half the cost of ``dict(zip(...))`` and the fix-ups after it, per request."""
    values = ", ".join(
        # msgpack makes tuples lists; apps expect tuples (pairs: scope_problem() checked it)
        f"{key!r}: None if d[{i}] is None else (d[{i}][0], d[{i}][1])"
        if key in ("client", "server")
        else f"{key!r}: d[{i}]"
        for i, key in enumerate(_SCOPE_KEYS[kind])
    )
    # A dict display makes fresh dicts on each call: the app may change its scope's.
    tail = f"'extensions': {_extensions(kind)!r}, 'state': {{}}"
    names: dict[str, Any] = {}
    exec(f"def build(d):\n    return {{{values}, {tail}}}", names)
    return names["build"]


def import_scope(data: Any) -> dict[str, Any]:
    """Rebuild a scope: msgpack turns tuples into lists; apps expect tuples for addresses."""
    if type(data) is list or type(data) is tuple:  # checked by scope_problem() beforehand
        built: dict[str, Any] = _SCOPE_BUILDERS[data[0]](data)
        return built
    scope: dict[str, Any] = data
    scope.setdefault("headers", [])  # [[name, value], ...]: any iterable of pairs
    client, server = scope.get("client"), scope.get("server")
    if client is not None and type(client) is not tuple:
        scope["client"] = tuple(client)
    if server is not None and type(server) is not tuple:
        scope["server"] = tuple(server)
    scope["extensions"] = _extensions(scope["type"])
    scope["state"] = {}
    return scope


def _extensions(kind: str) -> dict[str, Any]:
    """The extensions the services carry end to end. Only the denial response: the protocol
    server is uvicorn, whose every WebSocket implementation supports it, and relays it; its
    HTTP implementations offer none (no trailers, early hints, pathsend or zero-copy)."""
    return {"websocket.http.response": {}} if kind == "websocket" else {}


_SCOPE_BUILDERS = {kind: _scope_builder(kind) for kind in _SCOPE_KEYS}


def scope_problem(kind: str, data: Any) -> str | None:
    """What keeps ``data`` (a list, tuple or dict) from being the wire form of a ``kind``
    scope that :func:`import_scope` can rebuild, or None. The rest is the app's to check."""
    if type(data) is dict:
        if data.get("type") != kind:
            return f"must be a {kind} scope"
        client, server = data.get("client"), data.get("server")
    elif len(data) != _SCOPE_SHAPES[kind][1] or data[0] != kind:
        return f"must list the values of a {kind} scope"
    else:
        client, server = data[_CLIENT], data[_SERVER]
    if (client is None or (type(client) in _PAIR and len(client) == 2)) and (
        server is None or (type(server) in _PAIR and len(server) == 2)
    ):
        return None
    return "has a client or server address that is not a (host, port) pair"


def scope_expression(kind: str) -> str:
    """``scope_problem(kind, {v}) is None`` as one expression, for services/shapes.py to inline
    into the check of every ``k.http``/``k.ws``; a map is left to ``{check}`` (that function)."""
    pair = "({v}[%d] is None or (type({v}[%d]) is list or type({v}[%d]) is tuple)"
    pair += " and len({v}[%d]) == 2)"
    head = "{check}({v}) is None if type({v}) is dict else len({v}) == %d and {v}[0] == %r"
    parts = [
        head % (len(_SCOPE_KEYS[kind]), kind),
        pair % ((_CLIENT,) * 4),
        pair % ((_SERVER,) * 4),
    ]
    return "(" + " and ".join(parts) + ")"


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
    """``value`` if it is a ``kind``, else ``TypeError`` naming the ASGI key.

    A subclass of ``str`` or ``int`` (Django's ``SafeString``, an ``IntEnum``) comes back as
    the plain type: the receiving process checks exact types (services/messages.py), and an
    in-process layer hands the object over as it is."""
    if not isinstance(value, kind):
        kinds = kind if isinstance(kind, tuple) else (kind,)
        wanted = " or ".join("None" if k is type(None) else k.__name__ for k in kinds)
        raise TypeError(f"ASGI key {name!r} must be {wanted}, got {type(value).__name__}")
    cls = type(value)
    if cls is not str and isinstance(value, str):
        return str.__str__(value)
    if cls is not int and cls is not bool and isinstance(value, int):
        return int(value)
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
        return await resend_patiently(layer, channel, message, give_up)


async def resend_patiently(
    layer: BaseChannelLayer, channel: str, message: Message, give_up: float = 5.0
) -> bool:
    """:func:`send_patiently` after its first send found the channel full (callers on the hot
    path make that first send themselves: one coroutine less per message)."""
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

    @property
    def full(self) -> bool:
        """:meth:`reserve` would wait (for the receiver's ack)."""
        return self._sent - self._acked >= WINDOW

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
