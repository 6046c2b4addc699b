"""The origin stamp on the Redis copy of a group message.

A group send from host S reaches S's members through S's IPC segment (the path S's direct sends
to them take, so their order holds) and every member through Redis; the stamp names S, so a
receiver on S drops the Redis copy it already has (docs/layer.md, "Local + Redis").
"""

from __future__ import annotations

import msgpack

from layer.messages import Message

ORIGIN = "__layer_origin__"  # reserved: a message that holds it is refused
_KEY = msgpack.packb(ORIGIN)
_FIXMAP, _MAP16, _MAP32 = 0x80, 0xDE, 0xDF


def stamp(payload: bytes, host: str) -> bytes:
    """``payload`` (an encoded message, a msgpack map) with ``ORIGIN: host`` added, without
    decoding it: the map's count goes up by one and the pair is appended."""
    pair: bytes = _KEY + msgpack.packb(host)
    head = payload[0]
    if _FIXMAP <= head < _FIXMAP + 15:
        return bytes((head + 1,)) + payload[1:] + pair
    if head == _FIXMAP + 15:
        return b"\xde\x00\x10" + payload[1:] + pair
    if head == _MAP16:
        count = int.from_bytes(payload[1:3], "big") + 1
        if count <= 0xFFFF:
            return b"\xde" + count.to_bytes(2, "big") + payload[3:] + pair
        return b"\xdf" + count.to_bytes(4, "big") + payload[3:] + pair
    if head == _MAP32:
        count = int.from_bytes(payload[1:5], "big") + 1
        return b"\xdf" + count.to_bytes(4, "big") + payload[5:] + pair
    raise ValueError(f"not an encoded message (first byte {head:#04x})")


def refuse_reserved(message: Message) -> None:
    """A message must not carry the stamp's key: receivers would strip or drop it."""
    if type(message) is dict and ORIGIN in message:
        raise TypeError(f"message[{ORIGIN!r}]: the key is reserved by LocalRedisChannelLayer")
