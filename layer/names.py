"""Channel and group name rules, shared by every backend.

Valid channel names are ASCII letters, digits, ``-``, ``_`` and ``.``, with at most one ``!``
(process-specific: routed by the part up to and including ``!``) and at most one ``?``, and fewer
than :data:`MAX_NAME_LENGTH` characters. Group names use the same alphabet without ``!`` or ``?``.
"""

from __future__ import annotations

import re
from typing import cast

from layer.exceptions import InvalidName
from layer.flow import remember_name

MAX_NAME_LENGTH = 100  # names must be *shorter* than this, as Channels and asgiref enforce

_CHANNEL_RE = re.compile(r"[A-Za-z0-9_.?\-]+(?:![A-Za-z0-9_.?\-]*)?")
_GROUP_RE = re.compile(r"[A-Za-z0-9_.\-]+")
_KNOWN_CACHE_SIZE = 8192
_known_channels: set[str] = set()  # names already validated: the hot path is a set lookup
_ALPHABET = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.")


def valid_channel_name(name: object) -> bool:
    """True when ``name`` is a valid channel name (never raises)."""
    return (
        type(name) is str
        and len(name) < MAX_NAME_LENGTH
        and _CHANNEL_RE.fullmatch(name) is not None
        and name.count("?") <= 1
    )


def valid_group_name(name: object) -> bool:
    """True when ``name`` is a valid group name (never raises)."""
    return type(name) is str and len(name) < MAX_NAME_LENGTH and bool(_GROUP_RE.fullmatch(name))


def require_valid_channel_name(name: object) -> None:
    """Raise :class:`InvalidName` saying which rule ``name`` breaks."""
    if type(name) is str and name in _known_channels:
        return
    if not valid_channel_name(name):
        raise InvalidName(_explain("Channel", name, extra="!?"))
    remember_name(_known_channels, cast(str, name), _KNOWN_CACHE_SIZE)  # valid: a str


def require_valid_group_name(name: object) -> None:
    """Raise :class:`InvalidName` saying which rule ``name`` breaks."""
    if not valid_group_name(name):
        raise InvalidName(_explain("Group", name, extra=""))


def process_specific(name: str) -> bool:
    """Whether ``name`` is process-specific (``prefix!local``): only its process receives it."""
    return "!" in name


def non_local_name(name: str) -> str:
    """The routing part of a name: up to and including ``!``, or the whole name."""
    bang = name.find("!")
    return name if bang < 0 else name[: bang + 1]


def _explain(kind: str, name: object, extra: str) -> str:
    if not isinstance(name, str):
        return f"{kind} name must be a str, got {type(name).__name__} {name!r}"
    if len(name) >= MAX_NAME_LENGTH:
        return f"{kind} name {name[:40]!r}... is {len(name)} characters; it must be fewer than 100"
    if not name:
        return f"{kind} name must not be empty"
    bad = sorted({c for c in name if c not in _ALPHABET and c not in extra})
    if bad:
        allowed = "ASCII letters, digits, '-', '_', '.'"
        if extra:
            allowed += " (plus one '!' and one '?')"
        return f"{kind} name {name!r} contains {''.join(bad)!r}; only {allowed} are allowed"
    for mark in extra:
        if name.count(mark) > 1:
            return f"{kind} name {name!r} has more than one {mark!r}"
    return f"{kind} name {name!r} must not start with '!'"
