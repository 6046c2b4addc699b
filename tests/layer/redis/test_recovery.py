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
import socket
import struct
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
import uvloop

from harness.redis_server import RedisServer, running
from layer.redis import RedisChannelLayer, ShardUnavailable

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


class ResettingProxy:
    """A TCP proxy to a real server that can reset (RST) every client connection at once, as
    a restarted load balancer or NAT does: the client sees a reset, not a clean close."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = 0
        self._server: asyncio.Server | None = None
        self._clients: list[asyncio.StreamWriter] = []
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._clients.append(writer)
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)

        async def pump(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            with contextlib.suppress(OSError):
                while data := await src.read(65536):
                    dst.write(data)
            dst.close()

        for src, dst in ((reader, up_writer), (up_reader, writer)):
            task = asyncio.ensure_future(pump(src, dst))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    def reset_all(self) -> None:
        for writer in self._clients:
            if writer.transport.is_closing():  # the client left already: its socket is gone
                continue
            sock = writer.get_extra_info("socket")
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            writer.transport.abort()  # with linger 0: RST
        self._clients = []

    async def close(self) -> None:
        self.reset_all()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_connections_reset_while_idle_are_replaced(servers: list[RedisServer], loop: str) -> None:
    """A reset leaves the transport closed with an error, not at EOF. Before, the next command
    went to the dead transport: the first command after the reset failed, and on uvloop (the
    services' loop) the write raised RuntimeError, losing what was queued with it."""

    async def scenario() -> None:
        proxy = ResettingProxy(servers[0].port)
        await proxy.start()
        url = f"redis://127.0.0.1:{proxy.port}/0"
        layer = RedisChannelLayer(hosts=[url], socket_timeout=1.0)
        try:
            channel = await layer.new_channel()
            await layer.send(channel, {"type": "before"})
            assert await asyncio.wait_for(layer.receive(channel), GUARD) == {"type": "before"}
            waiting = asyncio.ensure_future(layer.receive(channel))
            await asyncio.sleep(SEEN)
            proxy.reset_all()
            await asyncio.sleep(SEEN)  # the event loop sees the resets
            await asyncio.wait_for(layer.group_add("g", channel), GUARD)  # a command, a reply
            await asyncio.wait_for(layer.send(channel, {"type": "after"}), GUARD)
            assert await asyncio.wait_for(waiting, GUARD) == {"type": "after"}
        finally:
            await layer.close()
            await proxy.close()

    (uvloop.run if loop == "uvloop" else asyncio.run)(scenario())
