"""Channel layers for Django Channels and plain asyncio: in-memory, IPC (shared memory), Redis.

Backends are imported by their dotted path (``layer.inmemory.InMemoryChannelLayer``,
``layer.ipc.IPCChannelLayer``, ``layer.redis.RedisChannelLayer``) so optional dependencies are
only needed for the backend in use.
"""

from __future__ import annotations

from layer.base import BaseChannelLayer
from layer.exceptions import (
    ChannelFull,
    ConfigError,
    InvalidChannelLayerError,
    InvalidName,
    InvalidOption,
    MessageTooLarge,
)

__version__ = "0.1.0"
__all__ = [
    "BaseChannelLayer",
    "ChannelFull",
    "ConfigError",
    "InvalidChannelLayerError",
    "InvalidName",
    "InvalidOption",
    "MessageTooLarge",
]
