"""Hostile HTTP and WebSocket clients against a real protocol server (IPC, one worker): each
limit of services/limits.py answers as nginx does (431, 408, 413, close 1009, keep-alive close),
nothing over a limit reaches the worker, and a header flood leaves the protocol server's memory
bounded. Raw sockets where a well-behaved client library would not misbehave."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import websockets
from websockets.exceptions import ConnectionClosed

from harness.ports import free_port
from tests.services.conftest import StackFactory
from tests.services.procs import Service, Stack, backend, wait_until
from tests.services.test_cli import layerkit

pytestmark = pytest.mark.timeout(180)

HEADER_TIMEOUT = 2.0
BODY_TIMEOUT = 3.0
MAX_BODY = 1 << 20
MAX_WS = 64 << 10
HEAD_LIMIT = 64 << 10  # the default of --max-header-size
LIMITS = {
    "KIT_HEADER_TIMEOUT": str(HEADER_TIMEOUT),
    "KIT_BODY_TIMEOUT": str(BODY_TIMEOUT),
    "KIT_MAX_BODY_SIZE": "1MiB",
    "KIT_KEEP_ALIVE_TIMEOUT": "1",
    "KIT_MAX_WS_MESSAGE": "64KiB",
}


class Site:
    """A protocol server and a worker with :data:`LIMITS`, shared by this module's tests."""

    def __init__(self, stack: Stack, events: Path) -> None:
        self.events = events
        self.worker = stack.add("worker", TESTAPP_EVENTS=str(events))
        self.front: Service = stack.add("protocol", TESTAPP_EVENTS=str(events), **LIMITS)

    def connect(self) -> socket.socket:
        return socket.create_connection(("127.0.0.1", self.front.port), timeout=15)

    def served(self) -> float:
        """Requests the worker has answered so far."""
        return self.worker.metric("kit_requests_total", role="worker", kind="http")

    def refused(self, status: int) -> float:
        return self.front.metric("kit_requests_total", kind="refused", status=str(status))

    def recorded(self, event: str) -> list[str]:
        text = self.events.read_text() if self.events.exists() else ""
        return [line for line in text.splitlines() if line.startswith(event + " ")]


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    with backend("ipc") as made:
        stack = Stack(made)
        try:
            yield Site(stack, tmp_path_factory.mktemp("hostile") / "events.log")
        finally:
            stack.close()


def answer(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes (a reset ends it too)."""
    chunks = []
    with contextlib.suppress(ConnectionResetError):
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def status_of(response: bytes) -> int:
    assert response.startswith(b"HTTP/1.1 "), response[:200]
    return int(response.split(b" ", 2)[1])


def send_all(sock: socket.socket, data: bytes) -> None:
    """Send what the server reads; it may stop reading and close once it has answered."""
    with contextlib.suppress(BrokenPipeError, ConnectionResetError):
        sock.sendall(data)


def test_a_head_over_the_limit_gets_431_and_never_reaches_a_worker(site: Site) -> None:
    before, refused = site.served(), site.refused(431)
    with site.connect() as sock:
        send_all(sock, b"GET /json HTTP/1.1\r\nHost: kit\r\nX-Big: " + b"a" * HEAD_LIMIT)
        send_all(sock, b"\r\n\r\n")
        response = answer(sock)
    assert status_of(response) == 431
    assert b"connection: close" in response
    # Many headers, each small, count together.
    many = b"".join(b"X-H%d: %s\r\n" % (i, b"v" * 100) for i in range(1000))
    with site.connect() as sock:
        send_all(sock, b"GET /json HTTP/1.1\r\nHost: kit\r\n" + many + b"\r\n")
        assert status_of(answer(sock)) == 431
    assert site.served() == before
    assert site.refused(431) == refused + 2
    # Just under the limit is served, with keep-alive (the limit counts each head afresh).
    with httpx.Client(base_url=site.front.url, timeout=10) as client:
        for _ in range(3):
            got = client.get("/json", headers={"x-big": "a" * (HEAD_LIMIT - 200)})
            assert got.status_code == 200
    assert site.served() == before + 3


def test_a_header_flood_leaves_memory_bounded(site: Site) -> None:
    """10 connections each sending 20 MB of one header (issue 19: +250 MB before the limit)."""
    pid = site.front.pid
    rss_before = _kib(pid, "VmRSS")
    flood = b"GET /json HTTP/1.1\r\nHost: kit\r\nX-Flood: " + b"f" * (20 << 20)
    statuses: list[int] = []

    def attack() -> None:
        with site.connect() as sock:
            send_all(sock, flood)
            statuses.append(status_of(answer(sock)))

    threads = [threading.Thread(target=attack) for _ in range(10)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert statuses == [431] * 10
    peak = _kib(pid, "VmHWM")  # the most the protocol server ever held
    assert peak - rss_before < 64 * 1024, f"RSS {rss_before} KiB before, peak {peak} KiB"
    with httpx.Client(base_url=site.front.url, timeout=10) as client:
        assert client.get("/json").status_code == 200


def _kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise AssertionError(f"no {field} for {pid}")


def test_a_slow_head_gets_408_and_an_idle_connection_is_closed(site: Site) -> None:
    before = site.served()
    with site.connect() as sock:  # slowloris: a byte every 0.2 s never completes a head
        sock.sendall(b"GET /json HTTP/1.1\r\nHost: kit\r\n")
        sock.settimeout(0.2)
        deadline = time.monotonic() + 30  # bounds a hung test only
        while time.monotonic() < deadline:
            try:
                sock.recv(1, socket.MSG_PEEK)  # answered (or closed)
                break
            except TimeoutError:
                send_all(sock, b"X")
        sock.settimeout(15)
        assert status_of(answer(sock)) == 408
    with site.connect() as sock:  # connected, never asked: closed without an answer
        assert answer(sock) == b""
    assert site.served() == before


def test_a_stalled_body_gets_408_and_its_app_hears_the_client_leave(site: Site) -> None:
    with site.connect() as sock:
        sock.sendall(
            b"POST /read-body?id=stall HTTP/1.1\r\nHost: kit\r\nContent-Length: 999999\r\n\r\nabc"
        )
        assert status_of(answer(sock)) == 408
    wait_until(lambda: site.recorded("cut stall"), "the app to hear the client leave")
    assert site.recorded("cut stall")[0].split()[-1] == "3"


def test_a_slow_steady_body_is_not_a_stalled_one(site: Site) -> None:
    """The body timeout is idle time between reads, not the time the whole body takes."""
    parts = 10
    pause = BODY_TIMEOUT / 6

    def body() -> Iterator[bytes]:
        for _ in range(parts):
            time.sleep(pause)
            yield b"x" * 1000

    with httpx.Client(base_url=site.front.url, timeout=30) as client:
        got = client.post("/read-body", content=body())  # chunked
    assert got.status_code == 200 and got.content == b"%d" % (parts * 1000)


def test_a_body_over_the_limit_gets_413(site: Site) -> None:
    before = site.served()
    with site.connect() as sock:  # announced: refused before any of the body is read
        sock.sendall(b"POST /read-body HTTP/1.1\r\nHost: kit\r\nContent-Length: %d\r\n\r\n" % (
            MAX_BODY + 1))  # fmt: skip
        assert status_of(answer(sock)) == 413
    assert site.served() == before
    with site.connect() as sock:  # chunked: cut once it passes the limit
        sock.sendall(b"POST /read-body?id=big HTTP/1.1\r\nHost: kit\r\n")
        sock.sendall(b"Transfer-Encoding: chunked\r\n\r\n")
        piece = b"%x\r\n%s\r\n" % (64 << 10, b"b" * (64 << 10))
        for _ in range(MAX_BODY // (64 << 10) + 4):
            send_all(sock, piece)
        assert status_of(answer(sock)) == 413
    wait_until(lambda: site.recorded("cut big"), "the app to hear the client leave")
    assert int(site.recorded("cut big")[0].split()[-1]) <= MAX_BODY
    with httpx.Client(base_url=site.front.url, timeout=30) as client:  # the limit itself is fine
        got = client.post("/read-body", content=b"o" * MAX_BODY)
        assert got.status_code == 200 and got.content == b"%d" % MAX_BODY


def test_an_idle_keep_alive_connection_is_closed(site: Site) -> None:
    with site.connect() as sock:
        sock.sendall(b"GET /json HTTP/1.1\r\nHost: kit\r\n\r\n")
        head = b""
        while b"}" not in head:
            head += sock.recv(65536)
        assert status_of(head) == 200
        sock.settimeout(4.5)  # --keep-alive-timeout 1; uvicorn's own default (5 s) would fail
        assert sock.recv(65536) == b""


def test_keep_alive_counts_idle_time_from_the_last_response(site: Site) -> None:
    """The keep-alive clock (one timer per connection, services/uvicorn_bridge.py) fires while
    the connection is in use and must not close it then; idle, it closes about a timeout after
    the last response."""
    with site.connect() as sock:
        started = time.monotonic()
        while time.monotonic() - started < 2.5:  # 2.5 timeouts, never idle for 1 s
            sock.sendall(b"GET /json HTTP/1.1\r\nHost: kit\r\n\r\n")
            head = b""
            while b"}" not in head:
                chunk = sock.recv(65536)
                assert chunk, "closed while in use"
                head += chunk
            assert status_of(head) == 200
            time.sleep(0.6)
        last = time.monotonic() - 0.6
        sock.settimeout(4.5)
        assert sock.recv(65536) == b""
        assert 0.9 <= time.monotonic() - last < 3.0  # the timeout after the last response


async def _ws_closed_by_limit(url: str, message: str | list[bytes]) -> int:
    async with websockets.connect(url, max_size=None) as ws:
        assert (await ws.recv()).isdigit()  # /whoami says which worker holds it
        await ws.send("x" * (MAX_WS // 2))
        assert await ws.recv() == "x" * (MAX_WS // 2)
        await ws.send(message)
        try:
            async with asyncio.timeout(15):
                got = await ws.recv()
        except ConnectionClosed as closed:
            assert closed.rcvd is not None
            return closed.rcvd.code
        raise AssertionError(f"a message over the limit was echoed ({len(got)} characters)")


def test_a_websocket_message_over_the_limit_closes_1009(site: Site) -> None:
    url = site.front.ws_url + "/whoami?id=ws-big"
    assert asyncio.run(_ws_closed_by_limit(url, "y" * (MAX_WS + 1))) == 1009
    fragments = [b"z" * (MAX_WS // 2), b"z" * (MAX_WS // 2 + 1)]  # one message in two frames
    assert asyncio.run(_ws_closed_by_limit(url + "f", fragments)) == 1009
    for ident in ("ws-big", "ws-bigf"):
        wait_until(lambda i=ident: site.recorded(f"disconnect {i}"), "the app to hear it")


def test_a_head_the_layer_cannot_carry_is_refused_without_a_traceback(
    stacks: StackFactory, tmp_path: Path
) -> None:
    """Under --max-header-size but over the layer's max_message_size (issue 19: 503 "channel
    layer unavailable" and a traceback)."""
    config = tmp_path / "tiny.yaml"  # the in-memory layer does not encode, so no size limit
    config.write_text(
        "default:\n  BACKEND: layer.ipc.IPCChannelLayer\n"
        "  CONFIG:\n    prefix: ${IPC_PREFIX}\n    size: 16MB\n    max_message_size: 16384\n"
    )
    stack = stacks("ipc")
    stack.add("worker", LAYER_CONFIG=str(config))
    front = stack.add("protocol", LAYER_CONFIG=str(config))
    with httpx.Client(base_url=front.url, timeout=10) as client:
        refused = client.get("/json", headers={"x-big": "a" * 20_000})
        assert refused.status_code == 503
        assert refused.text == "request head too large for the channel layer\n"
        assert client.get("/json").status_code == 200
    assert "Traceback" not in front.output()


@pytest.mark.parametrize(
    ("args", "env", "says"),
    [
        (["--max-header-size", "lots"], {}, "invalid size value"),
        (["--max-body-size", "-1"], {}, "invalid size value"),
        ([], {"KIT_BODY_TIMEOUT": "0"}, "--body-timeout must be a finite number > 0"),
        ([], {"KIT_HEADER_TIMEOUT": "inf"}, "--header-timeout must be a finite number > 0"),
    ],
)
def test_bad_limits_are_usage_errors(args: list[str], env: dict[str, str], says: str) -> None:
    ports = ["--port", str(free_port()), "--admin-port", str(free_port())]
    result = layerkit("combined", *args, *ports, **env)
    assert result.returncode == 2, result.stderr
    assert says in result.stderr
