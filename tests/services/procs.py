"""Real ``layerkit`` processes on free loopback ports, and the backends they can run on.

A backend here is a way to make configs whose processes share one layer: in-memory (combined
only), IPC (a fresh ``IPC_PREFIX`` per stack) and Redis (a fresh ``redis-server`` per stack).
IPC and Redis join the list when their backends exist in ``layer/``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import websockets
from websockets.exceptions import ConnectionClosed

from harness.ports import free_port

ROOT = Path(__file__).resolve().parents[2]
TEST_APP = "tests.services.testapp:application"


def wait_until(predicate: Callable[[], object], what: str, timeout: float = 20.0) -> None:
    """Poll ``predicate`` until truthy; the timeout only bounds a hung test, it asserts nothing."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"gave up waiting for {what}")
        time.sleep(0.05)


@dataclass
class Service:
    """One ``layerkit <role>`` subprocess."""

    role: str
    env: dict[str, str]
    port: int = 0
    admin_port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None
    log: Path | None = None
    module: str = "services"  # run as ``python -m <module> <role>``
    cwd: Path = ROOT  # the working directory: where ``--app`` is imported from

    def start(self, wait: bool = True) -> Service:
        env = {**os.environ, **self.env, "KIT_ADMIN_PORT": str(self.admin_port)}
        if self.role in ("protocol", "combined"):
            self.port = self.port or free_port()
            env["KIT_PORT"] = str(self.port)
        env["PYTHONPATH"] = str(ROOT)
        handle, name = tempfile.mkstemp(prefix=f"layerkit-{self.role}-", suffix=".log")
        self.log = Path(name)
        self.process = subprocess.Popen(
            [sys.executable, "-m", self.module, self.role],
            cwd=self.cwd,
            env=env,
            stdout=handle,
            stderr=subprocess.STDOUT,
        )
        os.close(handle)
        if wait:
            wait_until(self.healthy, f"{self.role} to come up\n{self.output()}")
            if self.role in ("protocol", "combined"):
                wait_until(self.ready, f"{self.role} to be ready\n{self.output()}")
        return self

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def admin(self, path: str) -> httpx.Response:
        return httpx.get(f"http://127.0.0.1:{self.admin_port}{path}", timeout=5)

    def healthy(self) -> bool:
        if self.process is not None and self.process.poll() is not None:
            raise RuntimeError(
                f"{self.role} exited with {self.process.returncode}\n{self.output()}"
            )
        try:
            return self.admin("/healthz").status_code == 200
        except httpx.HTTPError:
            return False

    def ready(self) -> bool:
        return self.admin("/readyz").status_code == 200

    def metric(self, name: str, **labels: str) -> float:
        """Sum of the samples of ``name`` whose labels include ``labels``."""
        total = 0.0
        for line in self.admin("/metrics").text.splitlines():
            if not line.startswith(name + "{") and not line.startswith(name + " "):
                continue
            head, _, value = line.rpartition(" ")
            if all(f'{k}="{v}"' in head for k, v in labels.items()):
                total += float(value)
        return total

    def signal(self, sig: int) -> None:
        assert self.process is not None
        self.process.send_signal(sig)

    def wait(self, timeout: float = 30) -> int:
        assert self.process is not None
        return self.process.wait(timeout)

    def output(self) -> str:
        return self.log.read_text(errors="replace")[-4000:] if self.log else ""

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def discard(self) -> None:
        """Stop and delete the log."""
        self.stop()
        if self.log is not None:
            with contextlib.suppress(OSError):
                self.log.unlink()


@dataclass
class Backend:
    """How to point processes at one shared layer."""

    name: str
    config: str
    env: dict[str, str] = field(default_factory=dict)
    cleanup: Callable[[], None] = lambda: None


@contextlib.contextmanager
def backend(name: str) -> Iterator[Backend]:
    """A fresh, isolated layer of kind ``name`` for one stack of processes."""
    if name == "inmemory":
        yield Backend(name, "config/inmemory.yaml")
    elif name == "ipc":
        prefix = f"t{uuid.uuid4().hex[:8]}"
        try:
            yield Backend(name, "config/ipc.yaml", {"IPC_PREFIX": prefix, "IPC_SIZE": "64MB"})
        finally:
            _unlink_ipc(prefix)
    elif name in ("redis", "redis_sharded", "local_redis"):
        from harness.redis_server import RedisServer

        servers = [RedisServer().start() for _ in range(1 if name == "redis" else 3)]
        shards = {f"REDIS_SHARD_{i}": server.url for i, server in enumerate(servers)}
        prefix = f"t{uuid.uuid4().hex[:8]}"
        try:
            if name == "redis":
                yield Backend(name, "config/redis.yaml", {"REDIS_URL": servers[0].url})
            elif name == "redis_sharded":
                yield Backend(name, "config/redis-sharded.yaml", shards)
            else:  # one simulated host: IPC inside it, the three shards for groups
                env = {"IPC_PREFIX": prefix, "IPC_SIZE": "64MB", **shards}
                yield Backend(name, "config/local-redis.yaml", env)
        finally:
            for server in servers:
                server.kill()
            _unlink_ipc(prefix)
    else:
        raise ValueError(f"unknown backend {name!r}")


def _unlink_ipc(prefix: str) -> None:
    """Remove the shared-memory segments a test's IPC layer left behind."""
    shm = Path("/dev/shm")
    for path in shm.glob(f"*{prefix}*"):
        with contextlib.suppress(OSError):
            path.unlink()


@dataclass
class Stack:
    """Protocol server(s) and workers sharing one backend."""

    backend: Backend
    services: list[Service] = field(default_factory=list)

    def env(self, **extra: str) -> dict[str, str]:
        return {
            "LAYER_CONFIG": self.backend.config,
            "KIT_APP": TEST_APP,
            "KIT_LOG_LEVEL": "info",
            **self.backend.env,
            **extra,
        }

    def add(self, role: str, wait: bool = True, module: str = "services", **extra: str) -> Service:
        service = Service(role, self.env(**extra), module=module)
        self.services.append(service)
        return service.start(wait=wait)

    def close(self) -> None:
        for service in reversed(self.services):
            service.discard()


async def closed_code(ws: websockets.ClientConnection, within: float) -> int:
    """Read until the server closes; return the close code it sent."""
    try:
        async with asyncio.timeout(within):
            while True:
                await ws.recv()
    except ConnectionClosed as closed:
        assert closed.rcvd is not None, "connection dropped without a close frame"
        return closed.rcvd.code
    raise AssertionError("unreachable")
