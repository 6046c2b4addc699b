"""A shard is SIGKILLed and restarted on the same port (empty): everything routed to it recovers
in the same process, with no layer recreated and no retries by the caller.

The layout is the protocol server + worker one (services/): two processes (two layers, each
with its own connections and client id) that each keep one receive running forever on their own
process-specific channel, plus a shared work channel on another shard.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

from layer.redis import RedisChannelLayer, ShardUnavailable
from tests.support.redis_server import RedisServer, running

GUARD = 30  # seconds: a hang guard, not a speed assertion
DEAD = 1  # the shard that gets killed
SEEN = 0.3  # seconds for the event loop to see closed connections (not an assertion)


@pytest.fixture
def servers() -> Iterator[list[RedisServer]]:
    yield from running(3)


@pytest.fixture
async def pair(servers: list[RedisServer]) -> AsyncIterator[list[RedisChannelLayer]]:
    """Two 'processes' (a protocol server and a worker) sharing a key prefix."""
    prefix = f"r{uuid.uuid4().hex[:8]}"
    made = [
        RedisChannelLayer(hosts=[s.url for s in servers], prefix=prefix, socket_timeout=1.0)
        for _ in range(2)
    ]
    yield made
    for layer in made:
        with contextlib.suppress(ConnectionError):
            await layer.flush()
        await layer.close()


async def channel_on(layer: RedisChannelLayer, shard: int, kind: str) -> str:
    """A new process-specific channel of ``layer`` whose inbox lives on ``shard``."""
    for i in range(1000):
        channel = await layer.new_channel(f"{kind}{i}")
        if layer.shard_of(channel) == shard:
            return channel
    raise AssertionError("no channel name lands on the shard")


def shared_on(layer: RedisChannelLayer, shard: int) -> str:
    return next(f"work{i}" for i in range(1000) if layer.shard_of(f"work{i}") == shard)


async def forever(layer: RedisChannelLayer, channel: str, out: asyncio.Queue[Any]) -> None:
    """A dispatch loop as in services: one receive after another, never restarted."""
    while True:
        await out.put(await layer.receive(channel))


class Stack:
    """A protocol server (``proto``) and a worker (``worker``) talking over the layer."""

    def __init__(self, proto: RedisChannelLayer, worker: RedisChannelLayer) -> None:
        self.proto, self.worker = proto, worker
        self.replies: asyncio.Queue[Any] = asyncio.Queue()
        self.frames: asyncio.Queue[Any] = asyncio.Queue()
        self.work_in: asyncio.Queue[Any] = asyncio.Queue()
        self.tasks: list[asyncio.Task[None]] = []

    async def start(self, work_shard: int) -> None:
        self.reply = await channel_on(self.proto, DEAD, "proto")
        self.inbox = await channel_on(self.worker, DEAD, "worker")
        self.work = shared_on(self.proto, work_shard)
        self.tasks = [
            asyncio.ensure_future(forever(self.proto, self.reply, self.replies)),
            asyncio.ensure_future(forever(self.worker, self.inbox, self.frames)),
            asyncio.ensure_future(forever(self.worker, self.work, self.work_in)),
            asyncio.ensure_future(self._serve()),
        ]

    async def _serve(self) -> None:
        """The worker: accept a connection from the work channel, echo frames on its inbox."""

        async def accept() -> None:
            while True:
                job = await self.work_in.get()
                await self.worker.send(job["reply"], {"type": "accept", "w": self.inbox})

        async def echo() -> None:
            while True:
                frame = await self.frames.get()
                await self.worker.send(self.reply, {"type": "echo", "text": frame["text"]})

        await asyncio.gather(accept(), echo())

    async def connection(self, text: str) -> str:
        """One WebSocket: connect through the work channel, then one frame and its echo."""
        await self.proto.send(self.work, {"type": "connect", "reply": self.reply})
        accepted = await asyncio.wait_for(self.replies.get(), GUARD)
        assert accepted["type"] == "accept"
        await self.proto.send(accepted["w"], {"type": "frame", "text": text})
        echoed = await asyncio.wait_for(self.replies.get(), GUARD)
        return str(echoed["text"])

    async def stop(self) -> None:
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        for task in self.tasks:
            assert task.cancelled(), "a dispatch loop died"


async def test_dispatch_loops_serve_again_after_their_shard_restarts(
    pair: list[RedisChannelLayer], servers: list[RedisServer]
) -> None:
    stack = Stack(*pair)
    await stack.start(work_shard=0)
    assert await stack.connection("before") == "before"

    servers[DEAD].kill()
    await asyncio.sleep(SEEN)
    with pytest.raises(ShardUnavailable):  # the protocol server notices (the worker is idle)
        await asyncio.wait_for(stack.proto.send(stack.reply, {"type": "lost"}), GUARD)
    servers[DEAD].start()  # same port, empty
    await asyncio.sleep(SEEN)

    # No retry: the first connection after the restart is served, through the same loops.
    assert await stack.connection("after") == "after"
    assert await stack.connection("again") == "again"
    await stack.stop()


async def test_every_connection_of_an_idle_process_reconnects_on_first_use(
    pair: list[RedisChannelLayer], servers: list[RedisServer]
) -> None:
    """The shard restarts while nothing is sent to it: the first send and receive after that
    succeed (they reconnect) instead of failing on the connection the server closed."""
    layer = pair[0]
    channel = await channel_on(layer, DEAD, "idle")
    shared = shared_on(layer, DEAD)
    for name in (channel, shared):
        await layer.send(name, {"type": "warm"})
        assert (await asyncio.wait_for(layer.receive(name), GUARD))["type"] == "warm"

    servers[DEAD].kill()
    servers[DEAD].start()
    await asyncio.sleep(SEEN)
    for name in (shared, channel):
        await layer.send(name, {"type": "after"})
        assert (await asyncio.wait_for(layer.receive(name), GUARD))["type"] == "after"
    await layer.group_add("room", channel)
    await layer.group_send("room", {"type": "group"})
    assert (await asyncio.wait_for(layer.receive(channel), GUARD))["type"] == "group"


async def test_waiting_receives_resume_when_the_shard_is_back(
    pair: list[RedisChannelLayer], servers: list[RedisServer]
) -> None:
    """As docs/redis.md says: a receive on a dead shard keeps waiting (cancellable) and gets
    the first message sent after the restart; one cancelled meanwhile loses nothing."""
    layer, sender = pair
    channels = [await channel_on(layer, DEAD, "wait"), shared_on(layer, DEAD)]
    waiting = [asyncio.ensure_future(layer.receive(c)) for c in channels]
    await asyncio.sleep(SEEN)

    servers[DEAD].kill()
    await asyncio.sleep(SEEN)
    given_up = asyncio.ensure_future(layer.receive(channels[0]))
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(asyncio.shield(given_up), SEEN)
    given_up.cancel()
    assert not any(w.done() for w in waiting)
    servers[DEAD].start()
    await asyncio.sleep(SEEN)

    for i, channel in enumerate(channels):
        await sender.send(channel, {"type": "after", "i": i})
    got = await asyncio.wait_for(asyncio.gather(*waiting), GUARD)
    assert [m["i"] for m in got] == [0, 1]


async def test_a_frozen_shard_fails_commands_after_the_timeout_then_recovers(
    pair: list[RedisChannelLayer], servers: list[RedisServer]
) -> None:
    """A server that stops answering (SIGSTOP: connections stay open, nothing comes back):
    a command fails with ShardUnavailable once ``socket_timeout`` passes instead of hanging;
    once the server answers again, the same layer sends and receives."""
    layer = pair[0]
    channel = await channel_on(layer, DEAD, "frozen")
    await layer.send(channel, {"type": "before"})
    assert (await asyncio.wait_for(layer.receive(channel), GUARD))["type"] == "before"
    process = servers[DEAD].process
    assert process is not None
    process.send_signal(signal.SIGSTOP)
    try:
        with pytest.raises(ShardUnavailable, match="no reply within"):
            await asyncio.wait_for(layer.send(shared_on(layer, DEAD), {"type": "stuck"}), GUARD)
    finally:
        process.send_signal(signal.SIGCONT)
    await layer.send(channel, {"type": "after"})
    assert (await asyncio.wait_for(layer.receive(channel), GUARD))["type"] == "after"
