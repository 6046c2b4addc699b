"""services/eager.py: a coroutine runs now, and costs a task only if it has to wait."""

from __future__ import annotations

import asyncio
from collections.abc import Generator
from typing import Any

import pytest

from services.eager import HOOK, eager


async def test_a_coroutine_that_does_not_wait_runs_now_without_a_task() -> None:
    ran: list[int] = []

    async def work() -> None:
        ran.append(1)

    assert eager(work()) is None
    assert ran == [1]


async def test_a_coroutine_that_waits_is_finished_by_a_task() -> None:
    loop = asyncio.get_running_loop()
    future: asyncio.Future[int] = loop.create_future()
    steps: list[object] = []

    async def work() -> None:
        steps.append("start")
        await asyncio.sleep(0)
        steps.append(await future)
        try:
            await loop.create_future()  # never done: the task is cancelled here
        finally:
            steps.append("finally")

    task = eager(work())
    assert task is not None and steps == ["start"]
    await asyncio.sleep(0.01)
    future.set_result(7)
    await asyncio.sleep(0.01)
    assert steps == ["start", 7]
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    assert steps == ["start", 7, "finally"]


async def test_a_failed_future_raises_inside_the_coroutine() -> None:
    future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    caught: list[BaseException] = []

    async def work() -> None:
        try:
            await future
        except ValueError as exc:
            caught.append(exc)

    task = eager(work())
    future.set_exception(ValueError("no"))
    assert task is not None
    await task
    assert [str(exc) for exc in caught] == ["no"]


class _Foreign:
    """An awaitable that yields what asyncio's task protocol does not (another framework's)."""

    def __await__(self) -> Generator[Any, None, None]:
        yield "not a future"


async def test_a_foreign_yield_fails_naming_the_hook() -> None:
    async def work() -> None:
        await _Foreign()

    task = eager(work())
    assert task is not None
    with pytest.raises(RuntimeError, match="not a future") as caught:
        await task
    assert HOOK in str(caught.value)
