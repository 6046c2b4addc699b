"""IPC backend fixtures: a unique prefix per test, nothing left in /dev/shm afterwards, and
worker processes (``tests.layer.ipc.worker``, or ``volume_roles`` for the ``v-*`` roles) that
tests start and talk to."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from layer.ipc import IPCChannelLayer

SHM = "/dev/shm"
ROOT = Path(__file__).resolve().parents[3]
_MODULE = {False: "tests.layer.ipc.worker", True: "tests.layer.ipc.volume_roles"}


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


class Worker:
    """A ``tests.layer.ipc.worker`` (``volume_roles`` for ``v-*`` roles) process speaking lines
    on stdin/stdout."""

    def __init__(self, role: str, prefix: str, *args: object) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", _MODULE[role.startswith("v-")], role, prefix, *map(str, args)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            cwd=ROOT,
        )

    async def line(self) -> str:
        """The worker's next line; waits in a thread, so this process's event loop keeps
        running (its layer's held sends are flushed at the end of a loop turn)."""
        assert self.proc.stdout is not None
        text = await asyncio.to_thread(self.proc.stdout.readline)
        if not text:
            raise AssertionError(f"worker exited with {self.proc.wait()} before saying anything")
        return text.strip()

    async def expect(self, text: str) -> None:
        assert await self.line() == text

    async def result(self, within: float = 300) -> dict:
        out, _ = await asyncio.to_thread(self.proc.communicate, timeout=within)
        assert self.proc.returncode == 0, f"worker failed with {self.proc.returncode}"
        return json.loads(out.strip().splitlines()[-1])

    def tell(self, text: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(text + "\n")
        self.proc.stdin.flush()

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()


@pytest.fixture
def workers() -> Iterator[list[Worker]]:
    """Workers a test starts; any still running at the end are killed."""
    started: list[Worker] = []
    yield started
    for worker in started:
        if worker.proc.poll() is None:
            worker.kill()


@pytest.fixture
def journal_steps(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The size in bytes of every journal step committed while the test runs, in order."""
    from layer.ipc.journal import Journal

    steps: list[int] = []
    commit = Journal.commit

    def recorded(self: Journal) -> None:
        steps.append(self.end)
        commit(self)

    monkeypatch.setattr(Journal, "commit", recorded)
    return steps
