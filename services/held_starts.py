"""Response starts held to the end of the loop turn, in a worker.

An app's ``http.response.start`` is held until its first body (services/instance.py), so that
both travel as one ``k.resp``; an app that yields in between (an SSE stream, a long poll) must
still get its headers to the client at once. One callback per loop turn sends the starts still
held then, instead of a timer per request.
"""

from __future__ import annotations

import asyncio
from typing import Protocol


class _Holding(Protocol):
    def flush_start(self) -> None: ...


class HeldStarts:
    """Instances whose app sent ``http.response.start`` this loop turn: one callback per turn
    sends the start of those whose app yielded before its first body (no timer per request)."""

    __slots__ = ("_held", "_loop")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._held: list[_Holding] = []

    def add(self, inst: _Holding) -> None:
        if not self._held:
            self._loop.call_soon(self._run)
        self._held.append(inst)

    def _run(self) -> None:
        held, self._held = self._held, []
        for inst in held:
            inst.flush_start()
