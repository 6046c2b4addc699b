"""How each benchmark subject's processes start, and the layer they share.

A subject is a way of serving the same app: uvicorn directly, ``layerkit combined``, or protocol
server + worker over IPC, Redis or local+Redis. Each setup is a context manager that creates
what the processes share (an IPC prefix, Redis servers on free ports) and removes it afterwards,
so suites only say which subjects they compare.
"""

from __future__ import annotations

import contextlib
import importlib.util
import shutil
import sys
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from bench.processes import Processes
from harness.redis_server import RedisServer

APP = "services.demo.app:application"
DIRECT, DIRECT_ONE_WRITE, COMBINED, IPC, REDIS, LOCAL = (
    "(a) uvicorn direct",
    "(a1) uvicorn direct, one write",
    "(b) combined in-memory",
    "(c) protocol+worker IPC",
    "(d) protocol+worker Redis",
    "(e) protocol+worker local+Redis",
)

Starter = Callable[[Processes, int], None]


def _direct(procs: Processes, port: int) -> None:
    procs.spawn(
        [
            sys.executable,
            "-m",
            "uvicorn",
            APP,
            "--port",
            str(port),
            "--http",
            "httptools",
            "--loop",
            "uvloop",
            # The protocol server's own uvicorn settings (services/runner.py), so the only
            # difference is the layer hop: no access log, no proxy-header rewriting, no
            # ``server`` header.
            "--no-access-log",
            "--no-proxy-headers",
            "--no-server-header",
            "--log-level",
            "warning",
        ],
        "uvicorn",
    )


def _direct_one_write(procs: Processes, port: int) -> None:
    """(a) with the protocol server's coalescing transport: no target, it shows how much of
    (b)-(d)'s figure comes from writing a response once rather than from the layer."""
    procs.spawn(
        [
            sys.executable,
            "-c",
            "import uvicorn; from services.coalesce import CoalescingHttpToolsProtocol as P; "
            f"uvicorn.run({APP!r}, port={port}, http=P, loop='uvloop', access_log=False, "
            "proxy_headers=False, server_header=False, log_level='warning')",
        ],
        "uvicorn",
    )


def combined(procs: Processes, port: int) -> None:
    procs.layerkit("combined", KIT_PORT=str(port), LAYER_CONFIG="config/inmemory.yaml")


@dataclass
class Setup:
    """How to start one subject, and the layer its processes share (none for direct uvicorn)."""

    start: Starter
    config: str | None = None
    env: dict[str, str] = field(default_factory=dict)
    servers: list[tuple[str, int]] = field(default_factory=list)  # (label, pid) of e.g. redis


def split(config: str, **env: str) -> Setup:
    def start(procs: Processes, port: int) -> None:
        procs.layerkit("worker", LAYER_CONFIG=config, **env)
        procs.layerkit("protocol", KIT_PORT=str(port), LAYER_CONFIG=config, **env)

    return Setup(start, config, env)


@contextlib.contextmanager
def ipc_split() -> Iterator[Setup]:
    prefix = f"b{uuid.uuid4().hex[:8]}"
    try:
        yield split("config/ipc.yaml", IPC_PREFIX=prefix)
    finally:
        for path in Path("/dev/shm").glob(f"*{prefix}*"):
            with contextlib.suppress(OSError):
                path.unlink()


@contextlib.contextmanager
def redis_split() -> Iterator[Setup]:
    server = RedisServer().start()
    try:
        assert server.process is not None
        setup = split("config/redis.yaml", REDIS_URL=server.url)
        setup.servers.append(("redis", server.process.pid))
        yield setup
    finally:
        server.stop()


@contextlib.contextmanager
def local_redis_split() -> Iterator[Setup]:
    """One pod: IPC between its protocol server and worker, three shards for groups."""
    servers = [RedisServer().start() for _ in range(3)]
    with ipc_split() as ipc:
        try:
            shards = {f"REDIS_SHARD_{i}": server.url for i, server in enumerate(servers)}
            setup = split("config/local-redis.yaml", **ipc.env, **shards)
            setup.servers.extend((f"redis{i}", s.process.pid) for i, s in enumerate(servers))  # type: ignore[union-attr]
            yield setup
        finally:
            for server in servers:
                server.stop()


@contextlib.contextmanager
def _always(setup: Setup) -> Iterator[Setup]:
    yield setup


@dataclass
class Subject:
    name: str
    available: Callable[[], bool]
    setup: Callable[[], contextlib.AbstractContextManager[Setup]]


# Hooks: a backend that is not in this checkout yet is skipped (and named in the notes).
SUBJECTS = [
    Subject(DIRECT, lambda: True, lambda: _always(Setup(_direct))),
    Subject(DIRECT_ONE_WRITE, lambda: True, lambda: _always(Setup(_direct_one_write))),
    Subject(COMBINED, lambda: True, lambda: _always(Setup(combined, "config/inmemory.yaml"))),
    Subject(IPC, lambda: importlib.util.find_spec("layer.ipc") is not None, ipc_split),
    Subject(
        REDIS,
        lambda: (
            importlib.util.find_spec("layer.redis") is not None
            and shutil.which("redis-server") is not None
        ),
        redis_split,
    ),
    Subject(
        LOCAL,
        lambda: (
            importlib.util.find_spec("layer.local") is not None
            and shutil.which("redis-server") is not None
        ),
        local_redis_split,
    ),
]
