"""Message validation and serialisation: the one seam every backend stores bytes through.

Messages are dicts with a str ``"type"`` whose values are str, bytes, int (signed 64-bit), float,
bool, None, lists/tuples and str-keyed dicts, nested. They are encoded with msgpack, which keeps
bytes and str apart and is several times faster than ``copy.deepcopy`` of the same dict.
"""

from __future__ import annotations

from typing import Any

import msgpack

from layer.exceptions import MessageTooLarge

Message = dict[str, Any]

DEFAULT_MAX_MESSAGE_SIZE = 8 * 1024 * 1024  # the spec's floor is 1 MB; leave room for framing
_INT_MIN, _INT_MAX = -(2**63), 2**63 - 1
_LEAVES = frozenset({str, bytes, float, bool, type(None)})
_IMMUTABLE = _LEAVES | {int}

_packb = msgpack.Packer(use_bin_type=True, autoreset=True).pack
_unpackb = msgpack.unpackb


class _Bad(Exception):
    """Internal: carries the reason while the failing path is assembled on the way out."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        self.path = ""


def validate_message(message: object) -> None:
    """Raise ``TypeError`` naming the path of the first value that is not allowed."""
    if type(message) is not dict:
        raise TypeError(f"message must be a dict, got {type(message).__name__}")
    if not isinstance(message.get("type"), str):
        raise TypeError('message["type"] must be a str naming the message type')
    try:
        _check_dict(message)
    except _Bad as bad:
        raise TypeError(f"message{bad.path}: {bad.reason}") from None


def _check_dict(value: dict[Any, Any]) -> None:
    for key, item in value.items():
        if type(key) is not str and not isinstance(key, str):
            bad = _Bad(f"dict key {key!r} is {type(key).__name__}; keys must be str")
            raise bad
        if type(item) in _LEAVES:
            continue
        try:
            _check(item)
        except _Bad as bad:
            bad.path = f'["{key}"]{bad.path}'
            raise


def _check(value: object) -> None:
    cls = type(value)
    if cls is int:
        if not _INT_MIN <= value <= _INT_MAX:  # type: ignore[operator]
            raise _Bad(f"int {value} does not fit in a signed 64-bit integer")
    elif cls is dict:
        _check_dict(value)  # type: ignore[arg-type]
    elif cls is list or cls is tuple:
        items: list[object] | tuple[object, ...] = value  # type: ignore[assignment]
        for index, item in enumerate(items):
            if type(item) in _LEAVES:
                continue
            try:
                _check(item)
            except _Bad as bad:
                bad.path = f"[{index}]{bad.path}"
                raise
    elif cls in _LEAVES or isinstance(value, bool | str | bytes | float):  # e.g. str enums
        return
    elif isinstance(value, int):
        _check(int(value))
    else:
        raise _Bad(f"{cls.__name__} not allowed")


def encode(message: Message, max_size: int = DEFAULT_MAX_MESSAGE_SIZE) -> bytes:
    """Validate and serialise ``message``; raise ``MessageTooLarge`` past ``max_size`` bytes."""
    validate_message(message)
    return encode_trusted(message, max_size)


def encode_trusted(message: Message, max_size: int = DEFAULT_MAX_MESSAGE_SIZE) -> bytes:
    """Serialise without the validating walk, for code that builds every value of ``message``.

    msgpack still refuses what it cannot encode (``TypeError``); what it would accept but a
    message must not hold (non-str keys, ints past 64 bits) is the caller's guarantee.
    """
    payload: bytes = _packb(message)
    if len(payload) > max_size:
        raise MessageTooLarge(
            f"message of type {message['type']!r} is {len(payload)} bytes encoded; "
            f"max_message_size is {max_size}"
        )
    return payload


def decode(payload: bytes) -> Message:
    """The inverse of :func:`encode`: a fresh dict the receiver owns."""
    message: Message = _unpackb(payload, raw=False)
    return message


def shared(payload: bytes) -> bytes | Message:
    """A fan-out payload for several receives of this process, opened once: the message when a
    shallow copy of it is a whole one (every value immutable, so no two receives share anything
    they could change; each takes :func:`own`), else the bytes, which each receive decodes (as
    it does bytes that do not decode: each raises)."""
    try:
        message = decode(payload)
    except Exception:  # not a message this layer wrote
        return payload
    return message if type(message) is dict and whole_when_shallow(message) else payload


def whole_when_shallow(message: Message) -> bool:
    """Whether a shallow copy of ``message`` is a whole one: every value immutable."""
    return _IMMUTABLE.issuperset(map(type, message.values()))


def own(payload: bytes | Message) -> bytes | Message:
    """What one receive takes of a payload several may hold (:func:`shared`): its own shallow
    copy of a message, made when it is received (a backlog holds one per entry, not per member)."""
    return payload.copy() if type(payload) is dict else payload
