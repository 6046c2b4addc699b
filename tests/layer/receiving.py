"""Receiving with a deadline, for the layer's tests: a hang is a failure, not a stuck run."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from layer.base import BaseChannelLayer

MB = 1024 * 1024


async def receive_soon(layer: BaseChannelLayer, channel: str, wait: float = 10.0) -> dict[str, Any]:
    """The next message on ``channel``; a test failure (TimeoutError) after ``wait`` seconds."""
    return await asyncio.wait_for(layer.receive(channel), wait)


async def assert_empty(layer: BaseChannelLayer, channel: str, wait: float = 0.2) -> None:
    """Nothing arrives on ``channel`` within ``wait`` seconds."""
    with pytest.raises(asyncio.TimeoutError):
        await asyncio.wait_for(layer.receive(channel), wait)
