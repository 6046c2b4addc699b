"""How a shard's failures reach callers: one builtin ``ConnectionError`` subclass naming the
shard (never its password), and a subclass of it for a server that refused this client.

Callers (the layer, the services) catch builtin exceptions only; redis-py's exception
classes stay inside ``layer/redis``.
"""

from __future__ import annotations

from redis.exceptions import (
    AuthenticationError,
    AuthenticationWrongNumberOfArgsError,
    NoPermissionError,
)

from layer.exceptions import AccessRefused
from layer.redis.hosts import ShardSpec


class ShardUnavailable(ConnectionError):
    """The Redis server of a shard cannot be reached (or stopped answering within the timeout)."""


class ShardRefused(ShardUnavailable, AccessRefused):
    """The Redis server of a shard answered but refused this client: a wrong password or user,
    no password where one is required, or an ACL user without a command the layer needs."""


_REFUSALS = (AuthenticationError, AuthenticationWrongNumberOfArgsError, NoPermissionError)


def unavailable(spec: ShardSpec, exc: BaseException, what: str = "failed") -> ShardUnavailable:
    """``exc`` (a redis-py or OS error) as callers see it: :class:`ShardRefused` when the server
    refused us (retrying cannot help until the configuration changes), else
    :class:`ShardUnavailable`; either names the shard, never its password."""
    if isinstance(exc, ShardUnavailable):
        return exc
    if isinstance(exc, _REFUSALS):
        why = "an ACL permission" if isinstance(exc, NoPermissionError) else "user or password"
        return ShardRefused(f"Redis shard {spec.name} refused this client ({why}): {exc}")
    return ShardUnavailable(f"Redis shard {spec.name} {what}: {exc}")
