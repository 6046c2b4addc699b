"""Redis backend: ``layer.redis.RedisChannelLayer``, sharded with consistent hashing.

Needs the ``redis`` extra (redis-py with hiredis, cryptography).
"""

from __future__ import annotations

from layer.redis.connection import ShardRefused, ShardUnavailable
from layer.redis.crypto import UndecryptableMessage
from layer.redis.layer import RedisChannelLayer

__all__ = ["RedisChannelLayer", "ShardRefused", "ShardUnavailable", "UndecryptableMessage"]
