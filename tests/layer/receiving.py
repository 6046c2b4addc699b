"""Receiving with a deadline, for the layer's tests: a hang is a failure, not a stuck run."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from typing import Any

import pytest
from asgiref.sync import async_to_sync

from layer.base import BaseChannelLayer

MB = 1024 * 1024


async def receive_soon(layer: BaseChannelLayer, channel: str, wait: float = 10.0) -> dict[str, Any]:
    """The next message on ``channel``; a test failure (TimeoutError) after ``wait`` seconds."""
    return await asyncio.wait_for(layer.receive(channel), wait)


async def assert_empty(layer: BaseChannelLayer, channel: str, wait: float = 0.2) -> None:
    """Nothing arrives on ``channel`` within ``wait`` seconds."""
    with pytest.raises(asyncio.TimeoutError):
        await asyncio.wait_for(layer.receive(channel), wait)


def received_by_short_loops(
    owner: BaseChannelLayer, remote: BaseChannelLayer, channel: str, total: int
) -> list[int]:
    """What sync code gets by receiving on ``channel`` with a 3 ms timeout, each call in a fresh
    event loop (``async_to_sync``), while ``remote`` (a thread with its own loop) sends ``total``
    numbered messages and then closes (unless it is ``owner``): loops end while a pop is waiting
    or being answered."""

    async def send_all() -> None:
        for i in range(total):
            await remote.send(channel, {"type": "r", "i": i})
            await asyncio.sleep(0.001 if i % 3 else 0.004)
        if remote is not owner:  # a close() of an IPC layer is final for every thread
            await remote.close()

    async def receive(wait: float) -> int | None:
        with contextlib.suppress(TimeoutError):
            return int((await asyncio.wait_for(owner.receive(channel), wait))["i"])
        return None

    sender = threading.Thread(target=asyncio.run, args=(send_all(),))
    got: list[int] = []
    try:
        sender.start()
        while sender.is_alive():
            if (i := async_to_sync(receive)(0.003)) is not None:
                got.append(i)
        while (i := async_to_sync(receive)(1.0)) is not None:
            got.append(i)
    finally:
        sender.join()
    return got
