"""Declared message shapes and their checks, for services/messages.py (which holds the keys).

A :class:`Spec` lists the fields of one message type and explains, field by field, the first
thing wrong with a message (:meth:`Spec.problem`). A :class:`Channel` is the types one channel
carries; its :attr:`Channel.check` is every spec's test compiled into one function, the hot path
every message a process takes goes through: one call, and per field a read, a ``type()`` and a
compare (a loop over the fields with a call per field costs about twice as much). Only a message
that fails is explained, the slow way, by :meth:`Channel.refusal`.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable
from typing import Any, Final, NamedTuple

from layer.messages import Message

Check = Callable[[Any], "str | None"]  # beyond the type: None when fine, else what is wrong


class BadMessage(Exception):
    """A message taken from the layer that this process cannot use.

    ``reason`` is a short label for the ``kit_bad_messages_total`` counter (one of a fixed set,
    never text from the message); ``kind`` the message's type when it is one we know, ``conn``
    its connection id when readable; the exception's text says what is wrong, for the log.
    """

    def __init__(
        self, reason: str, detail: str, kind: str | None = None, conn: str | None = None
    ) -> None:
        super().__init__(detail)
        self.reason = reason
        self.kind = kind
        self.conn = conn


class _Missing:
    """What a check sees for an absent field (never a type a field may have)."""


_MISSING: Final = _Missing()


class Field(NamedTuple):
    """One key of a message: what it is for, the types it may have, and any further check."""

    key: str
    name: str  # in log lines, and in the reason label: bad_<name>
    types: tuple[type, ...]  # compared with type(), never isinstance(): a bool is no int here
    required: bool = True
    check: Check | None = None
    memo: Collection[Any] | None = None  # values ``check`` passed before (it keeps them)
    inline: str | None = None  # ``check({v}) is None`` as an expression ({check}: the check)

    def problem(self, message: Message) -> str | None:
        """What is wrong with this field of ``message``, or None."""
        value = message.get(self.key, _MISSING)
        if value is _MISSING:
            return "is missing" if self.required else None
        if type(value) not in self.types:
            wanted = " or ".join("None" if t is type(None) else t.__name__ for t in self.types)
            return f"must be {wanted}, got {type(value).__name__}"
        return None if self.check is None else self.check(value)


class Spec(NamedTuple):
    """One message type as one direction carries it."""

    kind: str
    direction: str  # as docs/architecture.md's table says it
    fields: tuple[Field, ...]
    one_of: tuple[str, str] | None = None  # two optional keys: exactly one must be there

    def problem(self, message: Message) -> tuple[str, str] | None:
        """The first thing wrong with ``message`` as (reason, detail), or None."""
        for field in self.fields:
            wrong = field.problem(message)
            if wrong is not None:
                return f"bad_{field.name}", f"field {field.key!r} ({field.name}) {wrong}"
        if self.one_of is not None and (self.one_of[0] in message) == (self.one_of[1] in message):
            first, second = self.one_of
            return "bad_frame", f"must carry exactly one of {first!r} and {second!r}"
        return None


class Channel:
    """The message types one channel carries, checked by :attr:`check`:
    ``check(message, batched=False)`` returns ``message`` if it is sound, else raises
    :class:`BadMessage` (``batched``: it came inside a ``batch``, and batches do not nest)."""

    def __init__(
        self, specs: Iterable[Spec], keys: tuple[str, str], known: Collection[str], batch: str
    ) -> None:
        self.specs = {spec.kind: spec for spec in specs}  # tried in this order: hot ones first
        self.type_key, self.conn_key = keys
        self.known = known  # every type of the protocol: one of them here is "wrong_channel"
        self.batch = batch
        self.check: Callable[..., Message] = _compile(self)

    def refusal(self, message: object, batched: bool) -> BadMessage:
        """Why :attr:`check` refused ``message``: the slow way, only for a message that failed."""
        if type(message) is not dict:
            return BadMessage("not_a_dict", f"not a map: {type(message).__name__}")
        kind = message.get(self.type_key)
        spec = self.specs.get(kind) if type(kind) is str else None
        if spec is None:
            if type(kind) is str and kind in self.known:
                return BadMessage("wrong_channel", f"type {kind!r} does not belong on this channel")
            return BadMessage("unknown_type", "unknown type")
        problem = spec.problem(message)
        if problem is None:
            problem = ("nested_batch", "a batch inside a batch") if batched else ("bad_fields", "?")
        conn = message.get(self.conn_key)
        return BadMessage(*problem, spec.kind, conn if type(conn) is str else None)


def _compile(channel: Channel) -> Callable[..., Message]:
    """:attr:`Channel.check` as one function, a branch per type: the rules of
    :meth:`Spec.problem`, in the same order, as one expression per type."""
    names: dict[str, Any] = {"_M": _MISSING, "refuse": channel.refusal}
    lines = [
        "def check(m, batched=False):",
        "    if type(m) is dict:",
        "        get = m.get",
        f"        kind = get({channel.type_key!r})",
        "        try:",
    ]
    for s, spec in enumerate(channel.specs.values()):
        terms = ["not batched"] if spec.kind == channel.batch else []
        for f, field in enumerate(spec.fields):
            v, t, c, k = f"v{s}_{f}", f"t{s}_{f}", f"c{s}_{f}", f"k{s}_{f}"
            names[c], names[k] = field.check, field.memo
            names[t] = field.types[0] if len(field.types) == 1 else frozenset(field.types)
            typed = "is" if len(field.types) == 1 else "in"
            if field.required:  # absent: m[key] raises KeyError
                test = f"type({v} := m[{field.key!r}]) {typed} {t}"
            else:
                test = f"(({v} := get({field.key!r}, _M)) is _M or type({v}) {typed} {t})"
            if field.check is not None:
                passes = f"{c}({v}) is None"
                if field.inline is not None:
                    passes = field.inline.format(v=v, check=c)
                if field.memo is not None:
                    passes = f"{v} in {k} or {passes}"
                test = (
                    f"{test} and ({passes})"
                    if field.required
                    else f"{test} and ({v} is _M or {passes})"
                )
            terms.append(f"({test})")
        if spec.one_of is not None:
            terms.append(f"(({spec.one_of[0]!r} in m) != ({spec.one_of[1]!r} in m))")
        lines.append(f"            {'if' if s == 0 else 'elif'} kind == {spec.kind!r}:")
        lines.append(f"                if {' and '.join(terms)}:")
        lines.append("                    return m")
    lines += ["        except KeyError:", "            pass", "    raise refuse(m, batched)"]
    exec("\n".join(lines), names)
    check: Callable[..., Message] = names["check"]
    return check
