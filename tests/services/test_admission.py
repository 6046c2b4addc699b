"""Admission at real sizes (services/admission.py): idle connections cost memory, not slots.

Protocol server + worker over IPC serving the demo chat. With default options 2,000 WebSockets
in one room all open and all hear a broadcast while HTTP still answers; a flood of slow bodies
(more than ``--concurrency`` of them) leaves other requests served; ``--max-connections`` set
low refuses at once and says why (close reason or body, a log line, a metric).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import resource
import socket
from collections.abc import Callable, Iterator

import httpx
import pytest
import websockets
from websockets.exceptions import ConnectionClosed

from services.admission import CONCURRENCY
from tests.services.procs import Service, Stack, backend, closed_code, wait_until

pytestmark = pytest.mark.timeout(300)

DEMO = "services.demo.app:application"
MEMBERS = 2_000


@pytest.fixture
def stack() -> Iterator[Stack]:
    with backend("ipc") as made:
        made.env["IPC_SIZE"] = "256MB"  # the default of config/ipc.yaml
        stack = Stack(made)
        try:
            yield stack
        finally:
            stack.close()


@pytest.fixture(autouse=True)
def open_files() -> None:
    """The clients' sockets live in this process (the servers raise their own limit)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < 3 * MEMBERS:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 4 * MEMBERS), hard))


def site(stack: Stack, **options: str) -> tuple[Service, Service]:
    """A worker and a protocol server running the demo chat with ``options`` on both."""
    worker = stack.add("worker", KIT_APP=DEMO, **options)
    return worker, stack.add("protocol", KIT_APP=DEMO, **options)


async def members(url: str, n: int) -> list[websockets.ClientConnection]:
    """``n`` clients in one room, connecting all at once; raises if any is refused."""
    return list(
        await asyncio.gather(
            *(websockets.connect(url, open_timeout=60, ping_interval=None) for _ in range(n))
        )
    )


async def still_open(ws: websockets.ClientConnection) -> bool:
    """Nothing came and the socket did not close within a moment."""
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(0.01):
            await ws.recv()
        return False
    return True


async def test_2000_websockets_in_one_room_all_open_and_hear_a_broadcast(stack: Stack) -> None:
    """Default options: 2,000 > --concurrency, so every one of them used to hold a slot."""
    worker, front = site(stack)
    room = await members(f"{front.ws_url}/ws/crowd", MEMBERS)
    try:
        wait_until(
            lambda: worker.metric("kit_open_websockets", role="worker") == MEMBERS,
            "every member accepted",
            timeout=60,
        )
        assert front.metric("kit_open_websockets", role="protocol") == MEMBERS
        assert worker.metric("kit_inflight_connections", state="parked") == MEMBERS
        assert all(await asyncio.gather(*(still_open(ws) for ws in room[:50])))
        async with httpx.AsyncClient(base_url=front.url, timeout=30) as client:
            assert (await client.get("/json")).status_code == 200
            posted = await client.post("/rooms/crowd/messages", json={"user": "ops", "text": "hi"})
            assert posted.status_code == 202
            heard = await asyncio.gather(*(asyncio.wait_for(ws.recv(), 60) for ws in room))
            assert {json.loads(text)["text"] for text in heard} == {"hi"}
            # The room talks back: one member's message reaches all, HTTP answers meanwhile.
            await room[-1].send(json.dumps({"user": "last", "text": "hello all"}))
            answer = client.get("/json")
            heard = await asyncio.gather(*(asyncio.wait_for(ws.recv(), 60) for ws in room))
            assert {json.loads(text)["user"] for text in heard} == {"last"}
            assert (await answer).status_code == 200
        assert worker.metric("kit_limit_reached_total") == 0
        assert front.metric("kit_limit_reached_total") == 0
        assert "Traceback" not in worker.output() + front.output()
    finally:
        await asyncio.gather(*(ws.close() for ws in room))
    wait_until(
        lambda: worker.metric("kit_inflight_connections", role="worker") == 0,
        "every instance to end",
        timeout=60,
    )
    assert worker.metric("kit_inflight_connections", state="busy") == 0


def test_a_flood_of_slow_bodies_leaves_other_requests_served(stack: Stack) -> None:
    """More stalled bodies than --concurrency: each parks its app, none holds a slot; the body
    timeout ends them (408) and the worker lets go of every one."""
    worker, front = site(stack, KIT_BODY_TIMEOUT="4")
    flood = CONCURRENCY + 44
    head = (
        b"POST /rooms/slow/messages HTTP/1.1\r\nHost: kit\r\ncontent-type: application/json\r\n"
        b'content-length: 999999\r\n\r\n{"u'
    )
    slow = [socket.create_connection(("127.0.0.1", front.port), timeout=30) for _ in range(flood)]
    try:
        for sock in slow:
            sock.sendall(head)
        # Every one reached the app, which waits for the rest of its body.
        wait_until(
            lambda: (
                worker.metric("kit_inflight_connections", role="worker", state="parked") == flood
            ),
            "the slow requests to reach the app",
        )
        with httpx.Client(base_url=front.url, timeout=10) as client:
            for _ in range(5):
                assert client.get("/json").status_code == 200
            posted = client.post("/rooms/slow/messages", json={"user": "a", "text": "b"})
            assert posted.status_code == 202
        assert worker.metric("kit_limit_reached_total") == 0
        for sock in slow:
            assert sock.recv(4096).startswith(b"HTTP/1.1 408 ")
    finally:
        for sock in slow:
            sock.close()
    wait_until(
        lambda: worker.metric("kit_inflight_connections", role="worker") == 0,
        "the worker to let go of the slow requests",
    )
    assert worker.metric("kit_inflight_connections", state="busy") == 0


async def test_the_protocol_servers_connection_limit_refuses_at_once(stack: Stack) -> None:
    worker = stack.add("worker", KIT_APP=DEMO, KIT_CONCURRENCY="1")  # idle sockets: no slot
    front = stack.add("protocol", KIT_APP=DEMO, KIT_MAX_CONNECTIONS="20")
    room = await members(f"{front.ws_url}/ws/full", 20)
    try:
        wait_until(lambda: worker.metric("kit_open_websockets") == 20, "the members accepted")
        async with websockets.connect(f"{front.ws_url}/ws/full") as extra:
            with pytest.raises(ConnectionClosed) as closed:
                async with asyncio.timeout(2):  # well before the pickup timeout
                    await extra.recv()
        assert closed.value.rcvd is not None
        assert (closed.value.rcvd.code, closed.value.rcvd.reason) == (
            1013,
            "server at its connection limit",
        )
        async with httpx.AsyncClient(base_url=front.url, timeout=10) as client:
            refused = await client.get("/json")
            assert refused.status_code == 503
            assert refused.text == "server at its connection limit\n"
            assert refused.headers["retry-after"] == "1"
            await room.pop().close()
            wait_until(lambda: front.metric("kit_open_websockets") == 19, "one member to leave")
            assert (await client.get("/json")).status_code == 200
        assert front.metric("kit_limit_reached_total", role="protocol", limit="connections") == 2
        assert "refusing new connections (503 / close 1013): 20 open" in front.output()
        assert all(await asyncio.gather(*(still_open(ws) for ws in room)))
    finally:
        await asyncio.gather(*(ws.close() for ws in room))


async def test_a_full_worker_leaves_new_connections_to_others_and_says_so(stack: Stack) -> None:
    """A worker at --max-connections stops taking work: a sibling with room serves it; with
    none, the protocol server refuses it after --pickup-timeout."""
    worker = stack.add("worker", KIT_APP=DEMO, KIT_MAX_CONNECTIONS="10")
    front = stack.add("protocol", KIT_APP=DEMO, KIT_PICKUP_TIMEOUT="1")
    room = await members(f"{front.ws_url}/ws/busy", 10)
    try:
        async with websockets.connect(f"{front.ws_url}/ws/busy") as late:
            assert await closed_code(late, 10) == 1013
        assert late.close_reason == "no worker took the connection in time"
        assert worker.metric("kit_limit_reached_total", role="worker", limit="connections") == 1
        assert "at the connection limit (10 open, --max-connections 10)" in worker.output()
        async with httpx.AsyncClient(base_url=front.url, timeout=10) as client:
            assert (await client.get("/json")).status_code == 503
            sibling = stack.add("worker", KIT_APP=DEMO)
            assert (await client.get("/json")).status_code == 200
            assert sibling.metric("kit_requests_total", role="worker", kind="http") == 1
        await room.pop().close()
        wait_until(
            lambda: worker.metric("kit_inflight_connections", role="worker") == 9, "a free place"
        )
        room.append(await websockets.connect(f"{front.ws_url}/ws/busy"))
        assert all(await asyncio.gather(*(still_open(ws) for ws in room)))
    finally:
        await asyncio.gather(*(ws.close() for ws in room))


async def until(predicate: Callable[[], object], what: str) -> None:
    """:func:`wait_until` that lets this test's own clients run meanwhile."""
    await asyncio.to_thread(wait_until, predicate, what)


async def test_a_handshake_waits_for_room_on_a_full_work_channel() -> None:
    """An HTTP request finding work.asgi full gets 503 at once; a WebSocket handshake waits for
    room (a reconnect storm), and is served once the worker catches up."""
    with backend("inmemory") as made:
        stack = Stack(made)
        try:
            front = stack.add(
                "combined", KIT_CONCURRENCY="1", LAYER_WORK_CAPACITY="1", KIT_PICKUP_TIMEOUT="30"
            )
            async with httpx.AsyncClient(base_url=front.url, timeout=30) as client:
                busy = asyncio.create_task(client.get("/sleep", params={"s": "2"}))
                await until(lambda: front.metric("kit_inflight_connections", role="worker"), "1")
                queued = asyncio.create_task(client.get("/sleep", params={"s": "0"}))
                await until(
                    lambda: front.metric("kit_inflight_connections", state="waiting"), "queued"
                )
                shed = await client.get("/json")
                assert (shed.status_code, shed.text) == (503, "all workers are busy\n")
                async with websockets.connect(f"{front.ws_url}/whoami") as ws:
                    assert await asyncio.wait_for(ws.recv(), 30) == str(front.pid)
                assert (await busy).status_code == (await queued).status_code == 200
        finally:
            stack.close()


async def test_combined_mode_outlives_a_loop_busy_past_the_heartbeat_deadline() -> None:
    """One process cannot lose its own worker: a loop blocked for several heartbeats (a huge
    broadcast; here an app blocking it) must not make it drop its connections as if dead."""
    with backend("inmemory") as made:
        stack = Stack(made)
        try:
            front = stack.add("combined", KIT_HEARTBEAT="0.2")  # dead after 0.6 s of silence
            async with websockets.connect(f"{front.ws_url}/whoami") as ws:
                assert await ws.recv() == str(front.pid)
                async with httpx.AsyncClient(base_url=front.url, timeout=30) as client:
                    blocked = await client.get("/block", params={"s": "1.5"})
                    assert (blocked.status_code, blocked.text) == (200, "blocked")
                await asyncio.sleep(0.5)  # a few watchdog rounds after the loop is free
                await ws.send("still there?")
                assert await asyncio.wait_for(ws.recv(), 10) == "still there?"
            log = front.output()
            assert "went silent" not in log and "stopped heart-beating" not in log
        finally:
            stack.close()
