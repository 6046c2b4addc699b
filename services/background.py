"""Fire-and-forget layer calls for heartbeats and announcements, at most one in flight per key.

A call that fails because the layer is unreachable logs one line per problem every 10 s (every
tick of every peer would otherwise repeat it); any other failure logs its traceback.

A send to an unreachable shard can take seconds (up to the layer's ``socket_timeout``): run
inline it would delay the beats to every other peer and the checks for silent peers, and run
unbounded it would pile up a task per tick. So each key (a peer, "hello", the group) gets one
task; a tick that finds the previous one still trying skips it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine
from typing import Any

from layer.exceptions import ChannelFull
from layer.logs import Throttled


class OneInFlight:
    def __init__(self, log: logging.Logger) -> None:
        self._log = log
        self._unreachable = Throttled(log)
        self._tasks: dict[str, asyncio.Task[None]] = {}

    def run(self, key: str, call: Coroutine[Any, Any, object]) -> None:
        """Start ``call`` unless the previous call under ``key`` is still in flight."""
        if key in self._tasks:
            call.close()
            return
        task = asyncio.create_task(self._quietly(key, call))
        self._tasks[key] = task
        task.add_done_callback(lambda _: self._tasks.pop(key, None))

    async def _quietly(self, key: str, call: Coroutine[Any, Any, object]) -> None:
        try:
            await call
        except ChannelFull:
            pass  # a peer too busy to take a heartbeat is alive; the next tick tries again
        except ConnectionError as exc:  # a shard down or refusing us: a line, not a traceback
            self._unreachable(str(exc), logging.WARNING, "background %s failed: %s", key, exc)
        except Exception:
            self._log.exception("background %s failed", key)

    async def cancel(self) -> None:
        tasks = list(self._tasks.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


class Vital:
    """Tasks the process cannot do without (a routing loop, a runner): one that ends before its
    time has died; its exception is logged and :meth:`failing` names it, which fails
    ``/healthz`` so that an orchestrator restarts the process."""

    def __init__(self, log: logging.Logger) -> None:
        self._log = log
        self._dead: dict[str, str] = {}  # task name -> how it ended

    def watch(self, task: asyncio.Task[None], may_end: Callable[[], bool]) -> asyncio.Task[None]:
        """Watch ``task``; it may end (or be cancelled) only once ``may_end()`` is true."""
        task.add_done_callback(lambda done: self._ended(done, may_end()))
        return task

    def _ended(self, task: asyncio.Task[None], expected: bool) -> None:
        error = None if task.cancelled() else task.exception()  # retrieved: no asyncio warning
        if expected and error is None:
            return
        name = task.get_name()
        how = "was cancelled" if task.cancelled() else "returned"
        if error is not None:
            how = f"raised {type(error).__name__}: {error}"
        self._log.critical("%s %s; /healthz fails from now on", name, how, exc_info=error)
        self._dead.setdefault(name, how)

    def failing(self) -> list[str]:
        """What has died, as ``"<task name> <how>"``; empty while everything runs."""
        return [f"{name} {how}" for name, how in self._dead.items()]
