"""Fixtures: stacks of real ``layerkit`` processes on every backend this checkout has."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.services.procs import Service, Stack, backend

CROSS = ["ipc", "redis"]  # the backends that cross processes: each failure test runs on both
# Traffic also runs over three Redis shards (channels, groups and replies spread across them),
# and over IPC + those shards (layer.local: one pod's processes, Redis for groups).
ALL = ["inmemory", *CROSS, "redis_sharded", "local_redis"]

StackFactory = Callable[[str], Stack]


@pytest.fixture
def events(tmp_path: Path) -> Path:
    """File the test app appends worker-side events to (``TESTAPP_EVENTS``)."""
    return tmp_path / "events.log"


@pytest.fixture
def stacks() -> Iterator[StackFactory]:
    """``make(backend_name)`` -> an empty :class:`Stack`; every process is stopped afterwards."""
    made: list[tuple[Stack, object]] = []

    def make(name: str) -> Stack:
        manager = backend(name)
        stack = Stack(manager.__enter__())
        made.append((stack, manager))
        return stack

    yield make
    for stack, manager in reversed(made):
        stack.close()
        manager.__exit__(None, None, None)  # type: ignore[attr-defined]


@dataclass
class Served:
    """Where clients connect, and the processes running the app."""

    front: Service
    workers: list[Service]
    stack: Stack

    @property
    def url(self) -> str:
        return self.front.url

    @property
    def ws_url(self) -> str:
        return self.front.ws_url


def serve(stacks: StackFactory, name: str, events: Path, workers: int = 2, **env: str) -> Served:
    """Combined mode on in-memory; protocol server + ``workers`` workers otherwise."""
    stack = stacks(name)
    env = {"TESTAPP_EVENTS": str(events), **env}
    if name == "inmemory":
        front = stack.add("combined", **env)
        return Served(front, [front], stack)
    started = [stack.add("worker", **env) for _ in range(workers)]
    return Served(stack.add("protocol", **env), started, stack)


@pytest.fixture(params=ALL)
def served(request: pytest.FixtureRequest, stacks: StackFactory, events: Path) -> Served:
    return serve(stacks, request.param, events)
