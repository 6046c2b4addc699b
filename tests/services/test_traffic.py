"""HTTP and WebSocket through protocol server + two workers (combined mode on in-memory)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import httpx
import pytest
import websockets

from tests.services.conftest import CROSS, Served, StackFactory, serve
from tests.services.procs import wait_until

pytestmark = pytest.mark.timeout(120)


def test_small_json_and_status(served: Served) -> None:
    with httpx.Client(base_url=served.url, timeout=10) as client:
        assert client.get("/json").json() == {"message": "hello, world"}
        status = client.get("/status").json()
        assert status["role"] in ("worker", "combined")
        assert status["pid"] in {worker.pid for worker in served.workers}
        assert status["backend"].startswith("layer.")
        missing = client.get("/nowhere")
        assert missing.status_code == 404 and "no route" in missing.json()["error"]


def test_large_bodies_are_chunked_both_ways(served: Served) -> None:
    payload = bytes(range(256)) * 12_000  # ~3 MB: many messages, past the flow-control window
    with httpx.Client(base_url=served.url, timeout=30) as client:
        echoed = client.post("/echo-body", content=payload)
        assert echoed.status_code == 200 and echoed.content == payload
        streamed = client.post("/echo-body", content=iter([payload[:100_000], payload[100_000:]]))
        assert streamed.content == payload
        size = 5_000_000
        big = client.get("/big", params={"n": size})
        assert big.content == (bytes(range(256)) * (size // 256 + 1))[:size]


def test_streaming_response_arrives_in_pieces(served: Served) -> None:
    with (
        httpx.Client(base_url=served.url, timeout=10) as client,
        client.stream("GET", "/stream", params={"n": 3}) as response,
    ):
        assert response.status_code == 200
        assert b"".join(response.iter_raw()) == b"0\n1\n2\nend\n"


def test_streaming_headers_arrive_before_the_first_chunk(served: Served, tmp_path: Path) -> None:
    """An app that sends ``http.response.start`` and waits (SSE, long poll): the client gets the
    headers at once; the body only comes once the test lets the app go on (issue 19)."""
    go = tmp_path / "go"
    with (
        httpx.Client(base_url=served.url, timeout=10) as client,
        client.stream("GET", "/late-body", params={"go": str(go)}) as response,
    ):
        assert response.status_code == 200  # the headers came without any of the body
        go.touch()
        assert b"".join(response.iter_raw()) == b"late\nend\n"
    logs = "".join(worker.output() for worker in served.workers)
    assert "Traceback" not in logs and "never retrieved" not in logs, logs


def test_client_leaving_a_streaming_response_reaches_the_app(served: Served, events: Path) -> None:
    with (
        httpx.Client(base_url=served.url, timeout=10) as client,
        client.stream("GET", "/stream-until-gone", params={"id": "s1"}) as response,
    ):
        lines = response.iter_lines()
        assert [next(lines), next(lines)] == ["tick", "tick"]
    # The connection closed mid-stream: the app's receive must say http.disconnect.
    wait_until(lambda: events.exists() and "gone s1 " in events.read_text(), "the app to see it")


def test_app_error_is_a_500(served: Served) -> None:
    with httpx.Client(base_url=served.url, timeout=10) as client:
        assert client.get("/crash").status_code == 500
        assert client.get("/json").status_code == 200


def test_wrongly_typed_response_is_a_500_naming_the_key(served: Served) -> None:
    with httpx.Client(base_url=served.url, timeout=10) as client:
        assert client.get("/wrong-types").status_code == 500
    logs = "".join(worker.output() for worker in served.workers)
    assert "ASGI key 'body' must be bytes or bytearray or memoryview, got str" in logs


async def test_websocket_echo_small_and_large(served: Served) -> None:
    async with websockets.connect(f"{served.ws_url}/echo", max_size=None) as ws:
        await ws.send("hello")
        assert await ws.recv() == "hello"
        blob = bytes(range(256)) * 8_000  # 2 MB frame, fragmented over the layer
        await ws.send(blob)
        assert await ws.recv() == blob
        text = "ü" * 700_000
        await ws.send(text)
        assert await ws.recv() == text
        for index in range(50):  # more frames than the flow-control window
            await ws.send(f"m{index}")
        assert [await ws.recv() for _ in range(50)] == [f"m{i}" for i in range(50)]


async def test_chat_room_over_websockets_and_post(served: Served) -> None:
    async with (
        websockets.connect(f"{served.ws_url}/ws/lobby") as alice,
        websockets.connect(f"{served.ws_url}/ws/lobby") as bob,
    ):
        await alice.send(json.dumps({"user": "alice", "text": "hi bob"}))
        for ws in (alice, bob):
            assert json.loads(await ws.recv())["text"] == "hi bob"
        async with httpx.AsyncClient(base_url=served.url, timeout=10) as client:
            posted = await client.post("/rooms/lobby/messages", json={"user": "ops", "text": "up"})
            assert posted.status_code == 202
            bad = await client.post("/rooms/lobby/messages", json={"user": "ops"})
            assert bad.status_code == 400
        for ws in (alice, bob):
            message = json.loads(await ws.recv())
            assert (message["user"], message["text"]) == ("ops", "up")


@pytest.mark.parametrize("name", CROSS)
async def test_two_workers_share_the_work(stacks: StackFactory, events: Path, name: str) -> None:
    served = serve(stacks, name, events, KIT_CONCURRENCY="1")
    async with httpx.AsyncClient(base_url=served.url, timeout=20) as client:
        replies = await asyncio.gather(
            *(client.get("/sleep", params={"s": "0.3"}) for _ in range(4))
        )
    assert {reply.status_code for reply in replies} == {200}
    assert {int(reply.headers["pid"]) for reply in replies} == {w.pid for w in served.workers}


async def test_tiny_max_message_size_still_carries_everything(
    stacks: StackFactory, events: Path, tmp_path: Path
) -> None:
    """Chunks of 4 KiB: every path that splits bodies and frames is exercised many times."""
    config = tmp_path / "tiny.yaml"
    config.write_text(
        "default:\n  BACKEND: layer.inmemory.InMemoryChannelLayer\n"
        "  CONFIG:\n    max_message_size: 8192\n"
    )
    stack = stacks("inmemory")
    front = stack.add("combined", LAYER_CONFIG=str(config), TESTAPP_EVENTS=str(events))
    payload = bytes(range(256)) * 2_000  # 512 KB
    async with httpx.AsyncClient(base_url=front.url, timeout=30) as client:
        echoed = await client.post("/echo-body", content=payload)
        assert echoed.content == payload
        small = payload[:20_000]  # arrives whole, yet needs several messages
        assert (await client.post("/echo-body", content=small)).content == small
        big = await client.get("/big", params={"n": 300_000})
        assert len(big.content) == 300_000
    async with websockets.connect(f"{front.ws_url}/echo", max_size=None) as ws:
        await ws.send(payload)
        assert await ws.recv() == payload
        await ws.send("x" * 50_000)
        assert await ws.recv() == "x" * 50_000
