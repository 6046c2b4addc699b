"""services/uvicorn_bridge.py: the uvicorn internals the protocol server uses are there
(checked on a real server in this process), and a uvicorn without one fails with its name."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import socket
from collections.abc import AsyncIterator
from typing import Any

import pytest
from packaging.specifiers import SpecifierSet

from services import uvicorn_bridge as bridge
from services.eager import eager
from tests.support.pins import installed_within

REAL = {
    "HttpToolsProtocol": bridge.HttpToolsProtocol,
    "RequestResponseCycle": bridge.RequestResponseCycle,
    "Server": bridge._UvicornServer,
}


def test_the_installed_uvicorn_has_every_hook() -> None:
    assert bridge.missing_hooks(REAL) == []


def test_the_installed_uvicorn_is_within_the_tested_range() -> None:
    _, spec = installed_within("uvicorn")
    assert SpecifierSet(spec) == SpecifierSet(bridge.TESTED_RANGE)


class _Protocol:
    """uvicorn's protocol as a release might change it: the task hook renamed, ``tasks``
    kept elsewhere, a parser callback taking another argument."""

    def __init__(self) -> None:
        self.loop = None
        self.transport = None
        self.cycle = self.flow = self.parser = self.headers = self.client = None
        self.timeout_keep_alive = 5

    def connection_made(self, transport: Any) -> None: ...
    def connection_lost(self, exc: Any) -> None: ...
    def data_received(self, data: bytes) -> None: ...
    def on_headers_complete(self) -> None:
        self.start_task()

    def start_task(self) -> None: ...
    def on_body(self, chunk: bytes) -> None: ...
    def on_message_complete(self) -> None: ...
    def handle_websocket_upgrade(self) -> None: ...


class _Server:
    def capture_signals(self) -> None: ...

    async def serve(self) -> None: ...  # no longer calls capture_signals


def test_missing_hooks_fail_with_their_names() -> None:
    classes = {**REAL, "HttpToolsProtocol": _Protocol, "Server": _Server}
    with pytest.raises(ImportError) as caught:
        bridge.require(classes, "9.9")
    message = str(caught.value)
    assert message.startswith("uvicorn 9.9 lacks what services/uvicorn_bridge.py uses: ")
    for named in (
        "HttpToolsProtocol._start_asgi_task(cycle, app)",
        "HttpToolsProtocol.on_headers_complete calling self._start_asgi_task()",
        "HttpToolsProtocol.tasks (set in __init__)",
        "HttpToolsProtocol.on_body(body)",
        "Server.serve calling self.capture_signals()",
    ):
        assert named in message
    assert "run_asgi" not in message  # the real RequestResponseCycle has it
    assert bridge.TESTED in message
    assert bridge.missing_hooks({}) == [f"{owner}.{hook}" for owner, hook, _ in bridge.HOOKS]


class _Recording(bridge.HttpProtocol):
    """Answers /plain from a loop callback through the cycle (as services/plain.py does),
    anything else in uvicorn's task; records which hooks ran."""

    seen: list[str] = []

    def wrap_transport(self, transport: asyncio.Transport) -> asyncio.Transport:
        self.seen.append("wrap_transport")
        return super().wrap_transport(transport)

    def start_request(self, cycle: bridge.Cycle, app: Any) -> None:
        path = bridge.scope_of(cycle)["path"]
        self.seen.append(f"start_request {path} continue={bridge.expects_continue(cycle)}")
        if path == "/plain":
            task = eager(bridge.answer(cycle, _hello))
            assert task is None  # nothing waited: no task
            assert bridge.response_state(cycle) == (True, True)
        else:
            self.run_in_task(cycle, app)
            assert len(self.tasks) == 1
            self.keep(asyncio.ensure_future(asyncio.sleep(0)))
            assert len(self.tasks) == 2


async def _hello(scope: Any, receive: Any, send: Any) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"hello " + scope["path"].encode()})


@contextlib.asynccontextmanager
async def _serving() -> AsyncIterator[int]:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    config = bridge.Config(_hello, http=_Recording, lifespan="off", log_config=None)
    server = bridge.QuietServer(config)
    task = asyncio.ensure_future(server.serve(sockets=[sock]))
    for _ in range(500):  # up to 5 s
        if server.started:
            break
        await asyncio.sleep(0.01)
    assert server.started
    try:
        yield sock.getsockname()[1]
    finally:
        server.should_exit = True
        await task
        sock.close()


async def _get(port: int, path: str) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"GET {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n".encode())
    answer = await reader.read()
    writer.close()
    return answer


async def test_the_hooks_on_a_live_server() -> None:
    """Both request paths answer through a real uvicorn, and the runner's SIGTERM handler
    stays installed while it serves (uvicorn's capture_signals is off)."""
    loop = asyncio.get_running_loop()
    heard: list[bool] = []
    loop.add_signal_handler(signal.SIGTERM, lambda: heard.append(True))
    try:
        _Recording.seen = []
        async with _serving() as port:
            before = signal.getsignal(signal.SIGTERM)
            plain = await _get(port, "/plain")
            tasked = await _get(port, "/task")
            assert signal.getsignal(signal.SIGTERM) == before
            signal.raise_signal(signal.SIGTERM)
            await asyncio.sleep(0.05)
        assert heard == [True]
    finally:
        loop.remove_signal_handler(signal.SIGTERM)
    assert plain.startswith(b"HTTP/1.1 200 OK") and b"\r\nhello /plain\r\n" in plain
    assert tasked.startswith(b"HTTP/1.1 200 OK") and b"\r\nhello /task\r\n" in tasked
    assert _Recording.seen == [
        "wrap_transport",
        "start_request /plain continue=False",
        "wrap_transport",
        "start_request /task continue=False",
    ]
