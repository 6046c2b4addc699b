"""The wire format between protocol servers and workers: every ``k.*`` message, what each of its
fields is for, a builder per message, and the check every message taken from the layer passes.

This is the only module that spells the short keys (each is encoded for every request, hence one
or two letters): code elsewhere builds messages with the builders below and reads them with the
key constants (``message[STATUS]``). ``docs/architecture.md``'s message table is tested against
:data:`SPECS` (tests/services/test_messages.py).

What a process takes from a layer that crosses processes comes from peers that may run another
version, or from anything else that can write to the layer, so each loop that takes messages
passes them through the check of what its channel carries (:data:`WORK`, :data:`TO_WORKER`,
:data:`TO_PROTOCOL`): the type and shape of every field the process will use, and nothing more
(the app checks its own scope). A message that fails raises :class:`BadMessage` with a short
``reason`` for the ``kit_bad_messages_total`` counter; the loop drops it and goes on. How a
:class:`Spec` checks its fields (one compiled expression per type) is in services/shapes.py.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any, Final

from layer.flow import remember_name
from layer.messages import Message
from layer.names import valid_channel_name
from services import wire
from services.shapes import BadMessage as BadMessage
from services.shapes import Channel as Channel
from services.shapes import Field
from services.shapes import Spec as Spec

# -- keys -----------------------------------------------------------------------------------------
TYPE: Final = "type"
CONN: Final = "c"  # connection id, "<protocol server's client_id>.<counter>"
REPLY_CHANNEL: Final = "r"  # the protocol server's own channel
SCOPE: Final = "s"  # the ASGI scope (wire.export_scope)
DATA: Final = "b"  # bytes: a part of a body, or (a fragment of) a binary frame
TEXT: Final = "t"  # str: (a fragment of) a text frame
MORE: Final = "m"  # more body follows
DEADLINE: Final = "d"  # epoch seconds: after it the protocol server has answered 503
WORKER: Final = "w"  # the worker's own channel
STATUS: Final = "st"  # HTTP status
HEADERS: Final = "h"  # [[name, value], ...] of bytes
SUBPROTOCOL: Final = "sp"  # the WebSocket subprotocol the app accepted, or None
MORE_FRAGMENTS: Final = "f"  # more fragments of this frame follow
CODE: Final = "code"  # WebSocket close code, or HTTP status of a failure
REASON: Final = "rs"  # WebSocket close reason
CONSUMED: Final = "n"  # data messages of the connection consumed so far (flow control)
MESSAGES: Final = "ms"  # the messages of a batch, in order

# -- types ----------------------------------------------------------------------------------------
HTTP_OPEN: Final = "k.http"
WS_OPEN: Final = "k.ws"
PICKED: Final = "k.pick"
RESPONSE: Final = "k.resp"
RESPONSE_BODY: Final = "k.rbody"
BODY: Final = "k.body"
WS_ACCEPT: Final = "k.wsacc"
WS_IN: Final = "k.wsin"
WS_OUT: Final = "k.wsout"
WS_CLOSE: Final = "k.close"
DISCONNECT: Final = "k.disc"
APP_ERROR: Final = "k.err"
ACK: Final = "k.ack"
HEARTBEAT: Final = "k.hb"
HELLO: Final = "k.hello"
BATCH: Final = "k.batch"
# Local only: the protocol server posts these into a connection's inbox itself; never sent.
FAIL: Final = "k.fail"  # CODE: the liveness checks or the body pump end the connection
GONE: Final = "k.gone"  # CODE (WebSocket): the client went away

# What a connection of each kind may be sent (any other type for it is refused), and the
# messages that tell a protocol server which worker owns a connection (they carry WORKER).
HTTP_REPLIES: Final = frozenset({PICKED, RESPONSE, RESPONSE_BODY, APP_ERROR, ACK})
WEBSOCKET_REPLIES: Final = frozenset({PICKED, WS_ACCEPT, WS_OUT, WS_CLOSE, APP_ERROR, ACK})
# Until it is accepted, a WebSocket's handshake may be answered by an HTTP response instead
# (the ASGI websocket.http.response extension).
WEBSOCKET_DENIAL: Final = frozenset({RESPONSE, RESPONSE_BODY})
HTTP_FOLLOW_UPS: Final = frozenset({BODY, DISCONNECT, ACK})
WEBSOCKET_FOLLOW_UPS: Final = frozenset({WS_IN, DISCONNECT, ACK})
CLAIMS: Final = frozenset({PICKED, RESPONSE, WS_ACCEPT})

Headers = Sequence[Sequence[bytes]]  # [name, value] pairs

# -- builders -------------------------------------------------------------------------------------


def http_open(
    conn: str, reply: str, scope: Any, body: bytes, more: bool, deadline: float
) -> Message:
    """A new HTTP request: ``scope`` as ``wire.export_scope`` made it, its first body part."""
    return {
        TYPE: HTTP_OPEN, CONN: conn, REPLY_CHANNEL: reply, SCOPE: scope, DATA: body, MORE: more,
        DEADLINE: deadline,
    }  # fmt: skip


def ws_open(conn: str, reply: str, scope: Any, deadline: float) -> Message:
    """A new WebSocket whose client sent its handshake."""
    return {TYPE: WS_OPEN, CONN: conn, REPLY_CHANNEL: reply, SCOPE: scope, DEADLINE: deadline}


def picked(conn: str, worker: str) -> Message:
    """The worker ``worker`` owns ``conn`` (sent when the app is slow, or the body streams)."""
    return {TYPE: PICKED, CONN: conn, WORKER: worker}


def response(
    conn: str, worker: str, status: int, headers: Headers, body: bytes, more: bool
) -> Message:
    """``http.response.start`` and the first body part in one message."""
    return {
        TYPE: RESPONSE, CONN: conn, WORKER: worker, STATUS: status, HEADERS: headers, DATA: body,
        MORE: more,
    }  # fmt: skip


def response_body(conn: str, body: bytes, more: bool) -> Message:
    return {TYPE: RESPONSE_BODY, CONN: conn, DATA: body, MORE: more}


def request_body(conn: str, body: bytes, more: bool) -> Message:
    return {TYPE: BODY, CONN: conn, DATA: body, MORE: more}


def ws_accept(conn: str, worker: str, subprotocol: str | None, headers: Headers | None) -> Message:
    message: Message = {TYPE: WS_ACCEPT, CONN: conn, WORKER: worker, SUBPROTOCOL: subprotocol}
    if headers:
        message[HEADERS] = headers
    return message


def frame(kind: str, conn: str, data: str | bytes, more_fragments: bool) -> Message:
    """``WS_IN`` or ``WS_OUT``: a frame, or one fragment of a large one."""
    key = TEXT if type(data) is str else DATA
    return {TYPE: kind, CONN: conn, key: data, MORE_FRAGMENTS: more_fragments}


def frame_data(message: Message) -> Any:
    """The text or bytes of a checked ``WS_IN``/``WS_OUT``."""
    return message.get(TEXT, message.get(DATA))


def ws_close(conn: str, code: int, reason: str) -> Message:
    return {TYPE: WS_CLOSE, CONN: conn, CODE: code, REASON: reason}


def disconnect(conn: str, code: int | None = None) -> Message:
    """The client went away (a WebSocket's ``code``; none for HTTP)."""
    return {TYPE: DISCONNECT, CONN: conn} if code is None else {TYPE: DISCONNECT, CONN: conn, CODE: code}  # fmt: skip  # noqa: E501


def app_error(conn: str, code: int | None = None) -> Message:
    """The app raised (500 / 1011), or ``code`` (502: cancelled at drain, or peer silent)."""
    return {TYPE: APP_ERROR, CONN: conn} if code is None else {TYPE: APP_ERROR, CONN: conn, CODE: code}  # fmt: skip  # noqa: E501


def ack(conn: str, consumed: int) -> Message:
    return {TYPE: ACK, CONN: conn, CONSUMED: consumed}


def worker_heartbeat(worker: str) -> Message:
    return {TYPE: HEARTBEAT, WORKER: worker}


def protocol_heartbeat(reply: str) -> Message:
    return {TYPE: HEARTBEAT, REPLY_CHANNEL: reply}


def hello(worker: str) -> Message:
    return {TYPE: HELLO, WORKER: worker}


def batch(messages: list[Message]) -> Message:
    return {TYPE: BATCH, MESSAGES: messages}


def local(kind: str, code: int | None = None) -> Message:
    """``FAIL`` or ``GONE``, for a connection's own inbox."""
    return {TYPE: kind} if code is None else {TYPE: kind, CODE: code}


def code_of(message: Message, default: int) -> int:
    """The ``CODE`` of a (checked or local) message, else ``default``."""
    code: int = message.get(CODE, default)
    return code


def data_size(message: Message) -> int:
    """Bytes or characters of body or frame data ``message`` carries (0 for none)."""
    data = message.get(DATA, message.get(TEXT))
    return 0 if data is None else len(data)


# -- specs and checks -----------------------------------------------------------------------------


_checked_channels: set[str] = set()  # peer channels already checked: usually a set lookup


def _channel(value: str) -> str | None:
    if value in _checked_channels:
        return None
    if not valid_channel_name(value) or "!" not in value:
        return "must be a process-specific channel name"
    remember_name(_checked_channels, value, 1024)
    return None


def _headers(value: Sequence[Any]) -> str | None:
    try:
        for name, data in value:  # as uvicorn reads them
            if not isinstance(name, bytes) or not isinstance(data, bytes):
                return "must be pairs of byte strings"
    except (TypeError, ValueError):
        return "must be [name, value] pairs"
    return None


def _http_status(value: int) -> str | None:
    return None if 100 <= value <= 599 else f"must be an HTTP status (100-599), got {value}"


def _status(key: str, name: str, required: bool = True) -> Field:
    inline = "100 <= {v} <= 599"  # _http_status(v) is None, as an expression
    return Field(key, name, (int,), required, _http_status, inline=inline)


def _scope(kind: str) -> Field:
    check = functools.partial(wire.scope_problem, kind)
    return Field(
        SCOPE, "scope", (list, tuple, dict), check=check, inline=wire.scope_expression(kind)
    )


def _conn() -> Field:
    return Field(CONN, "conn", (str,))


def _worker() -> Field:
    return Field(WORKER, "worker", (str,), check=_channel, memo=_checked_channels)


def _reply() -> Field:
    return Field(REPLY_CHANNEL, "reply_channel", (str,), check=_channel, memo=_checked_channels)


def _body() -> tuple[Field, Field]:
    return Field(DATA, "body", (bytes,)), Field(MORE, "more", (bool,))


def _frame(kind: str, direction: str) -> Spec:
    text, data = Field(TEXT, "text", (str,), False), Field(DATA, "bytes", (bytes,), False)
    fields = (_conn(), text, data, Field(MORE_FRAGMENTS, "more_fragments", (bool,)))
    return Spec(kind, direction, fields, one_of=(TEXT, DATA))


_INT = (int,)
_NUMBER = (int, float)
_OPENS, _BACK, _FORTH = "protocol → `work.asgi`", "worker → reply", "protocol → worker"
SPECS: Final = (
    Spec(HTTP_OPEN, _OPENS, (_conn(), _reply(), _scope("http"), *_body(),
                             Field(DEADLINE, "deadline", _NUMBER))),
    Spec(WS_OPEN, _OPENS, (_conn(), _reply(), _scope("websocket"),
                           Field(DEADLINE, "deadline", _NUMBER))),
    Spec(RESPONSE, _BACK, (_conn(), _worker(), _status(STATUS, "status"),
                           Field(HEADERS, "headers", (list, tuple), check=_headers), *_body())),
    Spec(RESPONSE_BODY, _BACK, (_conn(), *_body())),
    Spec(BODY, _FORTH, (_conn(), *_body())),
    _frame(WS_OUT, _BACK),
    _frame(WS_IN, _FORTH),
    Spec(ACK, "both", (_conn(), Field(CONSUMED, "consumed", _INT))),
    Spec(BATCH, "both", (Field(MESSAGES, "messages", (list, tuple)),)),
    Spec(PICKED, _BACK, (_conn(), _worker())),
    Spec(WS_ACCEPT, _BACK, (_conn(), _worker(),
                            Field(SUBPROTOCOL, "subprotocol", (str, type(None)), False),
                            Field(HEADERS, "headers", (list, tuple), False, _headers))),
    Spec(WS_CLOSE, _BACK, (_conn(), Field(CODE, "code", _INT),
                           Field(REASON, "reason", (str, type(None)), False))),
    Spec(DISCONNECT, _FORTH, (_conn(), Field(CODE, "code", _INT, False))),
    Spec(APP_ERROR, _BACK, (_conn(), _status(CODE, "code", False))),
    Spec(HEARTBEAT, _BACK, (_worker(),)),
    Spec(HEARTBEAT, _FORTH, (_reply(),)),
    Spec(HELLO, "worker → group `kit.protocol`", (_worker(),)),
)  # fmt: skip  # (hot types first: each channel's check tries them in this order)
_KNOWN: Final = frozenset(spec.kind for spec in SPECS)


def _channel_of(*directions: str) -> Channel:
    specs = [spec for spec in SPECS if spec.direction in directions]
    return Channel(specs, (TYPE, CONN), _KNOWN, BATCH)


# What each channel carries: the work channel, a worker's own channel, a protocol server's own.
WORK: Final = _channel_of(_OPENS)
TO_WORKER: Final = _channel_of(_FORTH, "both")
TO_PROTOCOL: Final = _channel_of(_BACK, "both", "worker → group `kit.protocol`")


def check(message: object, channel: Channel, batched: bool = False) -> Message:
    """``message`` itself if it is a type ``channel`` carries, with every field the right type
    and shape; else :class:`BadMessage`. A batch's messages are checked one by one by the caller
    (``batched``: a batch in a batch is refused), so a bad one costs only itself. The loops call
    ``channel.check`` itself (one call less)."""
    return channel.check(message, batched)


def describe(message: object) -> str:
    """What ``message`` is, for a log line: its type if it has a readable one."""
    kind = message.get(TYPE) if type(message) is dict else None
    return repr(kind[:40]) if type(kind) is str else f"<{type(message).__name__}>"


REASONS: Final = frozenset(
    {"not_a_dict", "unknown_type", "wrong_channel", "wrong_connection", "bad_frame"}
    | {"nested_batch", "undecodable", "bad_fields"}
    | {f"bad_{field.name}" for spec in SPECS for field in spec.fields}
)  # every reason label a process can count
