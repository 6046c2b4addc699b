"""The only module that touches redis-py's private parts; checked when it is imported.

The layer's hot path talks to a redis-py connection below its public API, for measured
reasons (docs/architecture.md, Third-party internals):

* commands are written straight to the connection's ``asyncio.StreamWriter`` (``_writer``):
  ``send_packed_command`` is a coroutine that wraps every write in ``wait_for`` (a task per
  write on Python 3.11), where a batch here is one synchronous ``writelines``;
* replies are parsed by the connection's own hiredis reader (``_parser._reader``, configured
  by redis-py with its error classes and its ``NOT_ENOUGH_DATA`` sentinel) straight off its
  ``asyncio.StreamReader`` (``_reader``): ``read_response`` enters an ``asyncio.timeout`` per
  reply (a timer scheduled and cancelled);
* the stream reader also tells whether the server closed an idle connection (a restart),
  which ``is_connected`` does not.

Everything else (connecting, TLS, AUTH/ACL, SELECT, Sentinel, error classes) is redis-py's
public API. A redis-py release that renames one of these hooks fails at import with an
:class:`ImportError` naming it, instead of breaking the request path in a way no test names;
``pyproject.toml`` caps redis-py to :data:`TESTED` for the same reason.
"""

from __future__ import annotations

import asyncio
from importlib import import_module
from types import ModuleType
from typing import Any

from redis import __version__ as REDIS_VERSION
from redis.asyncio.connection import AbstractConnection, Connection

TESTED_RANGE = ">=5.1,<8.3"  # pyproject.toml's requirement (a test keeps the two equal)
TESTED = f"redis-py {TESTED_RANGE} with hiredis"

# The hooks, each as "where: what it must be" (the names a failed check lists).
HOOK_SENTINEL = "redis._parsers.hiredis.NOT_ENOUGH_DATA"
HOOK_WRITER = "AbstractConnection._writer (asyncio.StreamWriter once connected)"
HOOK_READER = "AbstractConnection._reader (asyncio.StreamReader once connected)"
HOOK_PARSER = "AbstractConnection._parser (redis-py's parser for the connection)"
HOOK_HIREDIS = "AbstractConnection._parser._reader (the hiredis.Reader once connected)"


def missing_hooks(parsers: ModuleType | Any, connection_class: type[Any]) -> list[str]:
    """The hooks that ``parsers`` (``redis._parsers.hiredis``) and a fresh, unconnected
    instance of ``connection_class`` lack; [] when all are there."""
    missing = []
    if not hasattr(parsers, "NOT_ENOUGH_DATA"):
        missing.append(HOOK_SENTINEL)
    conn = connection_class()
    for name, hook in (("_writer", HOOK_WRITER), ("_reader", HOOK_READER)):
        if not hasattr(conn, name):
            missing.append(hook)
    parser = getattr(conn, "_parser", None)
    if parser is None:
        missing.append(HOOK_PARSER)
    elif not hasattr(parser, "_reader") or "Hiredis" not in type(parser).__name__:
        kind = type(parser).__name__
        missing.append(f"{HOOK_HIREDIS}; the parser is a {kind}: is hiredis installed?")
    return missing


def require(parsers: ModuleType | Any, connection_class: type[Any], version: str) -> None:
    """Raise an :class:`ImportError` listing every hook missing from this redis-py."""
    missing = missing_hooks(parsers, connection_class)
    if missing:
        raise ImportError(
            f"redis-py {version} lacks what layer/redis/_compat.py uses: {'; '.join(missing)}. "
            f"Tested: {TESTED}."
        )


def _parsers_module() -> ModuleType | None:
    try:
        return import_module("redis._parsers.hiredis")
    except ImportError:
        return None


_PARSERS = _parsers_module()
require(_PARSERS, Connection, REDIS_VERSION)
assert _PARSERS is not None

#: What the connection's hiredis reader returns while a reply is incomplete (redis-py passes
#: it to ``hiredis.Reader(notEnoughData=...)``; compare with ``is``).
NOT_ENOUGH_DATA: Any = _PARSERS.NOT_ENOUGH_DATA


def writer_of(conn: AbstractConnection | None) -> asyncio.StreamWriter | None:
    """The connection's stream writer; None unless connected."""
    writer: asyncio.StreamWriter | None = getattr(conn, "_writer", None)
    return writer


def stream_of(conn: AbstractConnection | None) -> asyncio.StreamReader | None:
    """The connection's stream reader; None unless connected."""
    stream: asyncio.StreamReader | None = getattr(conn, "_reader", None)
    return stream


def hiredis_of(conn: AbstractConnection | None) -> Any:
    """The hiredis reader redis-py parses this connection's replies with; None unless
    connected (or when redis-py parses without hiredis)."""
    return getattr(getattr(conn, "_parser", None), "_reader", None)
