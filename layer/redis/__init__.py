"""Redis backend: ``layer.redis.RedisChannelLayer``, sharded with consistent hashing.

Needs the ``redis`` extra (redis-py with hiredis, cryptography).
"""

from __future__ import annotations

from layer.redis.crypto import UndecryptableMessage
from layer.redis.layer import RedisChannelLayer
from layer.redis.shard_errors import ShardRefused, ShardUnavailable

__all__ = ["RedisChannelLayer", "ShardRefused", "ShardUnavailable", "UndecryptableMessage"]
