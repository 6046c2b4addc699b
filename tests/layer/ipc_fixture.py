"""IPC backend fixtures: a unique prefix per test, and nothing left in /dev/shm afterwards."""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import pytest

from layer.ipc import IPCChannelLayer

SHM = "/dev/shm"


def shm_objects(prefix: str) -> list[str]:
    """What ``prefix`` has in /dev/shm (segment and doorbells)."""
    return sorted(
        name for name in os.listdir(SHM) if name.startswith((f"{prefix}.", f"sem.{prefix}."))
    )


@pytest.fixture
def ipc_prefix() -> Iterator[str]:
    """A fresh prefix; the test fails if anything of it is left in /dev/shm."""
    prefix = f"t{uuid.uuid4().hex[:12]}"
    yield prefix
    left = shm_objects(prefix)
    if left:
        from layer.ipc.segment import unlink

        unlink(prefix)
        pytest.fail(f"test left {left} in {SHM}")


@pytest.fixture
async def ipc_layer_factory(ipc_prefix: str) -> AsyncIterator[Callable[..., IPCChannelLayer]]:
    made: list[IPCChannelLayer] = []

    def factory(**options: Any) -> IPCChannelLayer:
        options.setdefault("prefix", ipc_prefix)
        options.setdefault("size", "16MB")
        made.append(IPCChannelLayer(**options))
        return made[-1]

    yield factory
    for layer in made:
        await layer.close()
    from layer.ipc.segment import unlink

    unlink(ipc_prefix)
