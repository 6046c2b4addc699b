"""IPC backend: a channel layer for the processes of one host, over POSIX shared memory.

See ``docs/ipc.md`` for the layout, locking, crash recovery and sizing.
"""

from __future__ import annotations

from layer.ipc.layer import IPCChannelLayer

__all__ = ["IPCChannelLayer"]
