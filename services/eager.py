"""Starting a coroutine now, in this loop turn, without a task unless it has to wait.

A send to a layer rarely waits (IPC never, Redis only without credit), so stepping the
coroutine by hand sends in this turn instead of in a task's first step in the next one, and
costs no task when it finishes at once (Python 3.12's ``asyncio.eager_task_factory`` does
the former, not the latter, and Python 3.11 has neither). Measured per call of a coroutine
that finishes at once (docs/architecture.md, Third-party internals): 0.3 µs stepped by hand
on Python 3.11 with uvloop; on 3.12 and 3.13 0.45-0.8 µs by hand against 1.0-1.5 µs with
``eager_task_factory``; 5-9 µs as a task.

Stepping by hand relies on asyncio's task protocol (the one hook here): an awaited future is
yielded to the driver as itself (``Future.__await__``), a bare ``asyncio.sleep(0)`` as None.
Anything else is reported as a :class:`RuntimeError` naming it, not mis-driven.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any

HOOK = "asyncio's task protocol: an awaited future is yielded as itself, sleep(0) as None"


def eager(coro: Coroutine[Any, Any, None]) -> asyncio.Task[None] | None:
    """Run ``coro`` now, up to its first suspension; a task finishes it if it suspends."""
    try:
        waiting = coro.send(None)
    except StopIteration:
        return None
    return asyncio.ensure_future(_resume(coro, waiting))


async def _resume(coro: Coroutine[Any, Any, None], waiting: Any) -> None:
    """Drive a started coroutine on as a task would: wait for what it waits on, step it."""
    try:
        while True:
            if waiting is None:  # a bare yield (asyncio.sleep(0))
                await asyncio.sleep(0)
            elif asyncio.isfuture(waiting):  # once done, the coroutine's await returns or raises
                await asyncio.wait((waiting,))
            else:
                raise RuntimeError(f"eager: a coroutine yielded {waiting!r}; relied on: {HOOK}")
            try:
                waiting = coro.send(None)
            except StopIteration:
                return
    finally:
        coro.close()  # cancelled while waiting: run its finally blocks
