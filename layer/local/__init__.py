"""Local + Redis backend: ``layer.local.LocalRedisChannelLayer``, IPC inside a host and Redis
between hosts (needs the ``redis`` extra). See docs/layer.md, "Local + Redis"."""

from __future__ import annotations

from layer.local.layer import LocalRedisChannelLayer

__all__ = ["LocalRedisChannelLayer"]
