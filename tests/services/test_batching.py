"""Replies batched per peer and loop turn (services/batching.py), on a real IPC layer, and
end to end through protocol server + workers."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
import websockets

from harness.redis_server import RedisServer
from layer.config import get_channel_layer
from layer.inmemory import InMemoryChannelLayer
from layer.ipc import IPCChannelLayer
from layer.messages import Message
from layer.redis import RedisChannelLayer
from services import messages as msg
from services import wire
from services.batching import ALONE, MOST, Batcher, checked, worth_batching
from tests.layer.ipc.fixture import ipc_layer_factory, ipc_prefix
from tests.services.conftest import CROSS, StackFactory, serve
from tests.services.procs import ROOT

__all__ = ["ipc_layer_factory", "ipc_prefix"]
pytestmark = pytest.mark.timeout(60)

Factory = Callable[..., IPCChannelLayer]


def _reply(n: int, body: bytes = b"") -> Message:
    return msg.response_body(f"x.{n}", body, False)


Lost = list[tuple[Message, str]]


def test_batching_and_checks_follow_declared_capabilities(ipc_layer_factory: Factory) -> None:
    """services ask the layer what it can do (layer/base.py) instead of testing its type: an
    in-process layer hands objects over (nothing to batch) and nothing else writes to it
    (nothing to check); a cross-process one is batched and what it delivers is checked."""
    memory, ipc = InMemoryChannelLayer(), ipc_layer_factory()
    assert not worth_batching(memory)
    assert checked(memory, "proto.x!y") is None
    assert worth_batching(ipc)
    assert checked(ipc, "proto.x!y") == "proto.x!y"


async def _batching(factory: Factory, **options: int) -> tuple[IPCChannelLayer, Batcher, Lost, str]:
    """A layer, a batcher on it, the list it reports undelivered messages to (with why), and a
    channel of this process to post to."""
    layer = factory(**options)
    lost: Lost = []
    batcher = Batcher(layer, lambda channel, message, why, refused: lost.append((message, why)))
    return layer, batcher, lost, await layer.new_channel("a")


async def _received(layer: IPCChannelLayer, channel: str, count: int) -> list[Message]:
    return [await asyncio.wait_for(layer.receive(channel), 5) for _ in range(count)]


async def test_one_turns_replies_leave_as_one_message_in_order(
    ipc_layer_factory: Factory,
) -> None:
    layer, batcher, lost, a = await _batching(ipc_layer_factory)
    b = await layer.new_channel("b")
    big = b"x" * (ALONE + 1)
    posted = [_reply(0), _reply(1), _reply(2), _reply(3, big), _reply(4), _reply(5)]
    for message in posted:
        batcher.post(a, message)
    batcher.post(b, _reply(9))
    await batcher.close()
    first, alone, last = await _received(layer, a, 3)
    assert first == msg.batch(posted[:3])
    assert alone == posted[3]  # a large body goes on its own, in its place
    assert last == msg.batch(posted[4:])
    assert await _received(layer, b, 1) == [_reply(9)]  # one message: not wrapped
    assert lost == []


async def test_a_batch_holds_at_most_MOST_messages(ipc_layer_factory: Factory) -> None:
    layer = ipc_layer_factory()
    batcher = Batcher(layer, lambda channel, message, why, refused: None)
    channel = await layer.new_channel("a")
    for n in range(MOST + 1):
        batcher.post(channel, _reply(n))
    await batcher.close()
    full, rest = await _received(layer, channel, 2)
    assert [m[msg.CONN] for m in full[msg.MESSAGES]] == [f"x.{n}" for n in range(MOST)]
    assert rest == _reply(MOST)


async def test_posts_while_a_send_waits_follow_it_in_order(ipc_layer_factory: Factory) -> None:
    """A full channel holds the first send back (it retries); what is posted meanwhile waits
    for it, then follows in order."""
    layer = ipc_layer_factory(capacity=1)
    batcher = Batcher(layer, lambda channel, message, why, refused: None)
    channel = await layer.new_channel("a")
    await layer.send(channel, {"type": "filler"})
    batcher.post(channel, _reply(0))
    batcher.post(channel, _reply(1))
    await asyncio.sleep(0.05)  # the batch is retrying against the full channel
    batcher.post(channel, _reply(2))
    await asyncio.sleep(0.05)
    assert (await layer.receive(channel))["type"] == "filler"
    got = [await asyncio.wait_for(layer.receive(channel), 5) for _ in range(2)]
    await batcher.close()
    assert got == [msg.batch([_reply(0), _reply(1)]), _reply(2)]


async def test_a_batch_too_large_for_the_layer_goes_one_by_one(
    ipc_layer_factory: Factory,
) -> None:
    """Headers are not counted when batching; a batch the layer refuses is split up."""
    layer, batcher, lost, channel = await _batching(ipc_layer_factory, max_message_size=8192)
    posted = [{**_reply(n), msg.HEADERS: [(b"x-pad", b"p" * 3000)]} for n in range(4)]
    for message in posted:
        batcher.post(channel, message)
    await batcher.close()
    got = await _received(layer, channel, 4)
    assert [m[msg.CONN] for m in got] == ["x.0", "x.1", "x.2", "x.3"]
    assert lost == []


async def test_replies_to_a_channel_that_stays_full_are_reported_lost(
    ipc_layer_factory: Factory,
) -> None:
    layer, batcher, lost, channel = await _batching(ipc_layer_factory, capacity=1)
    await layer.send(channel, {"type": "filler"})
    batcher.post(channel, _reply(0))
    batcher.post(channel, _reply(1))
    await asyncio.wait_for(batcher.close(), 15)  # gives up after send_patiently's 5 s
    assert [(m[msg.CONN], why) for m, why in lost] == [
        ("x.0", "stayed full"),
        ("x.1", "stayed full"),
    ]


@pytest.mark.parametrize("name", CROSS)
async def test_concurrent_requests_each_get_their_own_answer(
    stacks: StackFactory, events: Path, name: str
) -> None:
    """Many requests at once: replies travel batched, and each reaches its own client."""
    served = serve(stacks, name, events, workers=1)
    bodies = [f"request {n} ".encode() * (n + 1) for n in range(200)]
    async with httpx.AsyncClient(
        base_url=served.url, timeout=30, limits=httpx.Limits(max_connections=64)
    ) as client:
        replies = await asyncio.gather(*(client.post("/echo-body", content=b) for b in bodies))
    assert [reply.status_code for reply in replies] == [200] * len(bodies)
    assert [reply.content for reply in replies] == bodies


async def test_malformed_messages_on_the_reply_channel_are_ignored(
    stacks: StackFactory, events: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Whatever lands on a protocol server's reply channel, it logs it and keeps serving."""
    served = serve(stacks, "ipc", events, workers=1)
    for key, value in served.stack.backend.env.items():
        monkeypatch.setenv(key, value)
    layer = get_channel_layer("default", ROOT / served.stack.backend.config)
    try:
        for junk in (
            {msg.TYPE: msg.BATCH, msg.MESSAGES: 5},
            {msg.TYPE: msg.HEARTBEAT},
            {msg.TYPE: msg.RESPONSE, msg.CONN: 7},
        ):
            await layer.group_send(wire.PROTOCOL_GROUP, junk)
    finally:
        with contextlib.suppress(Exception):
            await layer.close()
    async with httpx.AsyncClient(base_url=served.url, timeout=10) as client:
        for _ in range(3):
            assert (await client.get("/json")).status_code == 200
    assert "ignoring a malformed message of type 'k.batch'" in served.front.output()
    assert "ignoring a malformed message of type 'k.hb'" in served.front.output()


@pytest.mark.parametrize("name", CROSS)
async def test_a_burst_of_frames_is_echoed_whole_and_in_order(
    stacks: StackFactory, events: Path, name: str
) -> None:
    """Frames read in one turn travel to the worker batched, echoes come back batched: every
    one arrives, in order, small and large (a large one goes on its own) mixed."""
    served = serve(stacks, name, events, workers=1)
    frames = [f"frame {n}" * (2000 if n % 25 == 0 else 1) for n in range(200)]
    async with websockets.connect(f"{served.ws_url}/echo", max_size=None) as ws:
        for frame in frames:  # no waiting between them: they pile up in the protocol server
            await ws.send(frame)
        echoed = [await asyncio.wait_for(ws.recv(), 10) for _ in frames]
    assert echoed == frames


async def test_a_reply_too_large_for_the_layer_is_a_500(
    stacks: StackFactory, events: Path, tmp_path: Path
) -> None:
    """Headers are not sliced like bodies: a response whose headers exceed the layer's message
    size is refused by the layer, and the client gets a 500 instead of waiting."""
    config = tmp_path / "small.yaml"
    config.write_text(
        "default:\n  BACKEND: layer.ipc.IPCChannelLayer\n"
        "  CONFIG:\n    prefix: ${IPC_PREFIX}\n    size: 64MB\n    max_message_size: 65536\n"
    )
    stack = stacks("ipc")
    stack.add("worker", LAYER_CONFIG=str(config), TESTAPP_EVENTS=str(events))
    front = stack.add("protocol", LAYER_CONFIG=str(config), TESTAPP_EVENTS=str(events))
    async with httpx.AsyncClient(base_url=front.url, timeout=10) as client:
        refused = await client.get("/huge-headers", params={"n": 100_000})
        assert refused.status_code == 500
        fits = await client.get("/huge-headers", params={"n": 1000})
        assert fits.status_code == 200 and fits.headers["x-huge"] == "h" * 1000


async def test_a_send_the_layer_fails_is_reported_lost_and_later_ones_still_go() -> None:
    """Redis refusing writes (maxmemory reached, noeviction) raises a ResponseError, neither
    a connection error nor ChannelFull: each message is reported lost, and the peer's queue
    is not left stuck behind the failure."""
    server = RedisServer().start()
    layer = RedisChannelLayer(hosts=[server.url])
    try:
        lost: Lost = []
        batcher = Batcher(layer, lambda channel, message, why, refused: lost.append((message, why)))
        channel = await layer.new_channel("a")  # nothing sent yet: the first send is checked
        admin = server.client()
        admin.config_set("maxmemory-policy", "noeviction")
        admin.config_set("maxmemory", 1)
        batcher.post(channel, _reply(1))
        batcher.post(channel, _reply(2))
        await batcher.close()
        assert [m[msg.CONN] for m, _ in lost] == ["x.1", "x.2"], lost
        assert all("maxmemory" in why for _, why in lost), lost
        admin.config_set("maxmemory", 0)
        batcher.post(channel, _reply(3))
        await batcher.close()
        assert await _received(layer, channel, 1) == [_reply(3)]
    finally:
        await layer.close()
        server.stop()
