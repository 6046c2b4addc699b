"""The peer core (services/peer.py) in one process: a real worker or protocol server on a real
layer (in-memory, or IPC where what arrives must be checked), and the test as the other peer,
talking the wire protocol over the same layer. Each test takes well under a second, where the
process tests (test_traffic, test_failures, test_poison) take several."""

from __future__ import annotations

import asyncio
import time
import weakref
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from layer.base import BaseChannelLayer
from layer.inmemory import InMemoryChannelLayer
from layer.ipc import IPCChannelLayer
from layer.messages import Message
from services import messages as msg
from services import wire
from services.metrics import Metrics
from services.protocol_server import ProtocolServer
from services.worker import Worker
from tests.layer.ipc.fixture import ipc_layer_factory, ipc_prefix

__all__ = ["ipc_layer_factory", "ipc_prefix"]
pytestmark = pytest.mark.timeout(30)

GUARD = 5.0  # seconds any one expected message may take
WS_SCOPE = {"type": "websocket", "path": "/echo", "headers": [], "subprotocols": []}
HTTP_SCOPE = {"type": "http", "method": "GET", "path": "/", "headers": [], "query_string": b""}


async def echo(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """Echoes every text frame; ``flood`` is answered with 40 frames; a disconnect's code is
    sent back as the text of a frame nobody will read (the tests read ``left``)."""
    if scope["type"] == "lifespan":
        return  # unsupported: fine (services/lifespan.py)
    await receive()
    await send({"type": "websocket.accept"})
    while True:
        event = await receive()
        if event["type"] == "websocket.disconnect":
            LEFT[scope["path"]] = event["code"]
            return
        if event["text"] == "flood":
            for n in range(40):
                await send({"type": "websocket.send", "text": str(n)})
        else:
            await send({"type": "websocket.send", "text": event["text"]})


LEFT: dict[str, int] = {}  # path -> the close code the app was told when its client left


class Front:
    """The test as a protocol server: opens WebSockets on the work channel, reads what the
    worker sends back on ``reply`` (batches unpacked), sends follow-ups."""

    def __init__(self, layer: BaseChannelLayer, reply: str) -> None:
        self.layer = layer
        self.reply = reply
        self.worker = ""  # the worker's channel, learnt from its accept
        self.got: list[Message] = []

    async def open(self, conn: str, path: str = "/echo") -> None:
        scope = wire.export_scope({**WS_SCOPE, "path": path})
        opening = msg.ws_open(conn, self.reply, scope, time.time() + 60)
        await self.layer.send_trusted(wire.WORK_CHANNEL, opening)
        accept = await self.next(lambda m: m[msg.TYPE] == msg.WS_ACCEPT and m[msg.CONN] == conn)
        self.worker = accept[msg.WORKER]

    async def send(self, message: Message) -> None:
        await self.layer.send_trusted(self.worker, message)

    async def next(self, wanted: Callable[[Message], bool]) -> Message:
        """The first message (of those not taken yet) that is ``wanted``."""
        while True:
            for message in self.got:
                if wanted(message):
                    self.got.remove(message)
                    return message
            message = await asyncio.wait_for(self.layer.receive(self.reply), GUARD)
            batch = message[msg.MESSAGES] if message[msg.TYPE] == msg.BATCH else [message]
            self.got += batch

    async def frames(self, conn: str, count: int) -> list[str]:
        return [(await self.next(_frame_of(conn)))[msg.TEXT] for _ in range(count)]

    async def silent(self, conn: str, seconds: float) -> None:
        """Nothing more comes for ``conn`` within ``seconds``."""
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(self.next(lambda m: m.get(msg.CONN) == conn), seconds)


def _frame_of(conn: str) -> Callable[[Message], bool]:
    return lambda m: m[msg.TYPE] == msg.WS_OUT and m[msg.CONN] == conn


def _error_of(conn: str) -> Callable[[Message], bool]:
    return lambda m: m[msg.TYPE] == msg.APP_ERROR and m[msg.CONN] == conn


def _in(conn: str, text: str, more: bool = False) -> Message:
    return msg.frame(msg.WS_IN, conn, text, more)


@pytest.fixture
async def memory() -> AsyncIterator[InMemoryChannelLayer]:
    layer = InMemoryChannelLayer()
    yield layer
    await layer.close()


Roles = list[Worker | ProtocolServer]


@pytest.fixture
async def roles() -> AsyncIterator[Roles]:
    """The roles a test started: stopped at its end, passed or failed (again: idempotent)."""
    started: Roles = []
    yield started
    for role in started:
        await role.stop()


async def _worker(roles: Roles, layer: BaseChannelLayer, heartbeat: float = 1.0) -> Worker:
    worker = Worker(layer, echo, Metrics(), heartbeat=heartbeat, drain_timeout=1.0)
    await worker.start()
    roles.append(worker)
    return worker


async def test_a_batch_is_routed_message_by_message_to_each_connection(
    memory: InMemoryChannelLayer, roles: Roles
) -> None:
    await _worker(roles, memory)
    front = Front(memory, await memory.new_channel("proto"))
    await front.open("t.1")
    await front.open("t.2")
    parts = [_in("t.1", "a"), _in("t.2", "b"), _in("t.1", "c"), _in("t.1", "d", True)]
    await front.send(msg.batch([*parts, _in("t.2", "e"), _in("t.1", "f")]))
    assert await front.frames("t.1", 3) == ["a", "c", "df"]  # fragments joined, in order
    assert await front.frames("t.2", 2) == ["b", "e"]


async def test_an_ack_opens_the_window_of_its_own_connection_only(
    memory: InMemoryChannelLayer, roles: Roles
) -> None:
    await _worker(roles, memory)
    front = Front(memory, await memory.new_channel("proto"))
    for conn in ("t.1", "t.2"):
        await front.open(conn)
        await front.send(_in(conn, "flood"))
    for conn in ("t.1", "t.2"):  # a window's worth each, then the app waits for acks
        assert await front.frames(conn, wire.WINDOW) == [str(n) for n in range(wire.WINDOW)]
    await front.send(msg.ack("t.1", wire.WINDOW))
    more = await front.frames("t.1", wire.WINDOW)
    assert more == [str(n) for n in range(wire.WINDOW, 2 * wire.WINDOW)]
    await front.silent("t.2", 0.3)
    await front.send(msg.ack("t.2", 2 * wire.WINDOW))  # an ack may cover more than a window
    assert len(await front.frames("t.2", 40 - wire.WINDOW)) == 40 - wire.WINDOW


async def test_a_silent_protocol_server_loses_its_connections_a_beating_one_keeps_them(
    memory: InMemoryChannelLayer, roles: Roles
) -> None:
    await _worker(roles, memory, heartbeat=0.1)
    # Channels of other processes: a peer in our own process is never given up.
    silent, beating = Front(memory, "proto.elsewhere!1"), Front(memory, "proto.elsewhere!2")
    await silent.open("t.1", "/silent")
    await beating.open("t.2", "/beating")
    beats = asyncio.create_task(_beat(beating))
    error = await silent.next(_error_of("t.1"))
    assert error[msg.CODE] == 502  # best effort: the silence may be one-way
    assert await silent.next(lambda m: m[msg.TYPE] == msg.HEARTBEAT)  # it was beaten meanwhile
    await asyncio.sleep(0.5)  # five heartbeats: well past dead_after for a silent peer
    assert LEFT.pop("/silent") == 1006
    await beating.send(_in("t.2", "still here"))
    assert await beating.frames("t.2", 1) == ["still here"]
    assert "/beating" not in LEFT
    beats.cancel()


async def _beat(front: Front) -> None:
    while True:
        await front.send(msg.protocol_heartbeat(front.reply))
        await asyncio.sleep(0.05)


async def test_malformed_messages_are_counted_and_dropped_and_fail_only_their_connection(
    ipc_layer_factory: Callable[..., IPCChannelLayer], roles: Roles
) -> None:
    """Over a layer that crosses processes, what arrives is checked: a message of no known
    type is dropped; one that names a connection but is not fit for it ends that connection
    (its app hears 1011, its protocol server a 502); others go on."""
    worker = await _worker(roles, ipc_layer_factory())
    other = ipc_layer_factory()  # the test's own process-specific channel
    front = Front(other, await other.new_channel("proto"))
    for n in (1, 2, 3):
        await front.open(f"t.{n}", f"/malformed{n}")
    await front.send({"type": "k.nope", "c": "t.3"})
    await front.send({**_in("t.1", "x"), msg.TEXT: 5})  # a known type with a bad field
    await front.send(msg.request_body("t.2", b"x", False))  # an HTTP follow-up
    await front.send(_in("t.3", "fine"))
    assert await front.frames("t.3", 1) == ["fine"]
    for conn in ("t.1", "t.2"):
        assert (await front.next(_error_of(conn)))[msg.CODE] == 502
    assert (LEFT.pop("/malformed1"), LEFT.pop("/malformed2")) == (1011, 1011)
    text = (await worker.metrics.render()).decode()
    for reason in ("unknown_type", "bad_text", "wrong_connection"):
        assert f'kit_bad_messages_total{{reason="{reason}",role="worker"}} 1.0' in text


async def test_stop_drains_connections_and_ends_the_loops_quietly(
    memory: InMemoryChannelLayer, roles: Roles
) -> None:
    worker = await _worker(roles, memory)
    front = Front(memory, await memory.new_channel("proto"))
    await front.open("t.1", "/drained")
    loops = list(worker._loops)
    await worker.stop()
    close = await front.next(lambda m: m[msg.TYPE] == msg.WS_CLOSE)
    assert (close[msg.CONN], close[msg.CODE]) == ("t.1", 1012)  # service restart: reconnect
    assert LEFT.pop("/drained") == 1012
    assert all(loop.done() for loop in loops) and len(loops) == 3
    assert worker.vital.failing() == []  # stopping is not dying: /healthz stays fine


# -- the protocol server's side --------------------------------------------------------------


class Client:
    """An HTTP client as uvicorn presents it to the protocol server's ASGI app."""

    def __init__(self) -> None:
        self.sent: list[dict[str, Any]] = []
        self._asked = False

    async def receive(self) -> dict[str, Any]:
        if not self._asked:
            self._asked = True
            return {"type": "http.request", "body": b"", "more_body": False}
        await asyncio.Event().wait()  # never leaves
        raise AssertionError

    async def send(self, event: dict[str, Any]) -> None:
        self.sent.append(event)

    def body(self) -> bytes:
        return b"".join(e.get("body", b"") for e in self.sent if e["type"] == "http.response.body")

    def status(self) -> int:
        return int(next(e["status"] for e in self.sent if e["type"] == "http.response.start"))


async def _protocol(
    roles: Roles, layer: BaseChannelLayer, heartbeat: float = 1.0
) -> ProtocolServer:
    server = ProtocolServer(layer, Metrics(), heartbeat=heartbeat)
    await server.start()
    roles.append(server)
    return server


async def _request(server: ProtocolServer, layer: BaseChannelLayer) -> tuple[Client, Any, str]:
    """A request through the protocol server: the client, the task relaying it, its id."""
    client = Client()
    task = asyncio.create_task(server(dict(HTTP_SCOPE), client.receive, client.send))
    opening = await asyncio.wait_for(layer.receive(wire.WORK_CHANNEL), GUARD)
    return client, task, opening[msg.CONN]


async def test_answers_go_to_their_request_and_the_relay_acks_what_its_client_took(
    memory: InMemoryChannelLayer, roles: Roles
) -> None:
    server = await _protocol(roles, memory)
    worker = await memory.new_channel("worker")
    first, first_task, c1 = await _request(server, memory)
    second, second_task, c2 = await _request(server, memory)
    await memory.send_trusted(server.channel, msg.response(c2, worker, 200, [], b"0", True))
    for n in range(1, 20):  # a streamed body: every wire.ACK_EVERY parts, an ack
        await memory.send_trusted(server.channel, msg.response_body(c2, b"%d" % n, n < 19))
    await memory.send_trusted(server.channel, msg.response(c1, worker, 201, [], b"one", False))
    await asyncio.wait_for(asyncio.gather(first_task, second_task), GUARD)
    assert (first.status(), first.body()) == (201, b"one")
    assert (second.status(), second.body()) == (200, b"".join(b"%d" % n for n in range(20)))
    acks = [await asyncio.wait_for(memory.receive(worker), GUARD) for _ in range(2)]
    assert acks == [msg.ack(c2, wire.ACK_EVERY), msg.ack(c2, 2 * wire.ACK_EVERY)]


async def test_a_worker_that_stops_beating_fails_its_requests_with_502(
    memory: InMemoryChannelLayer, roles: Roles
) -> None:
    server = await _protocol(roles, memory, heartbeat=0.1)
    client, task, conn = await _request(server, memory)
    await memory.send_trusted(server.channel, msg.picked(conn, "worker.elsewhere!1"))
    await asyncio.wait_for(task, GUARD)
    assert client.status() == 502
    beat = await asyncio.wait_for(memory.receive("worker.elsewhere!1"), GUARD)
    assert beat == msg.protocol_heartbeat(server.channel)  # beaten until given up
    await server.stop()
    assert server.vital.failing() == []


def _for(conn: str) -> Callable[[Message], bool]:
    return lambda m: m.get(msg.CONN) == conn


def _http_open(front: Front, conn: str, path: str) -> Message:
    scope = wire.export_scope({**HTTP_SCOPE, "path": path})
    return msg.http_open(conn, front.reply, scope, b"", False, time.time() + 60)


class Probe:
    """Something in a scope that a weak reference can watch (instances have no weakref slot)."""


async def test_a_finished_request_is_freed_at_once_not_held_until_the_announcement_scan(
    memory: InMemoryChannelLayer, roles: Roles
) -> None:
    """The worker keeps each new request where its ``k.pick`` scan (every ``ack_delay``) finds
    it; one answered before the scan must leave there as it finishes, else a worker under load
    holds a scan period's worth of dead instances (and their scopes), out of cache when freed.
    A slow one is still announced, once the scan comes."""
    alive: list[weakref.ref[Probe]] = []

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            return
        scope["probe"] = probe = Probe()  # lives as long as the instance holding the scope
        alive.append(weakref.ref(probe))
        if scope["path"] == "/slow":
            await asyncio.sleep(0.5)
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    worker = Worker(memory, app, Metrics(), drain_timeout=1.0, ack_delay=0.2)
    await worker.start()
    roles.append(worker)
    front = Front(memory, await memory.new_channel("proto"))
    for wave in range(40):  # 2,000 requests, in waves the channels' capacity takes
        conns = [f"t.{wave}.{n}" for n in range(50)]
        for conn in conns:  # (the scope is handed over as it is: no reference kept here)
            await memory.send_trusted(wire.WORK_CHANNEL, _http_open(front, conn, "/"))
        for conn in conns:
            assert (await front.next(_for(conn)))[msg.STATUS] == 200
    for _ in range(10):  # the runners' last steps after their answers
        await asyncio.sleep(0)
    assert len(alive) == 2000
    assert sum(ref() is not None for ref in alive) == 0
    await memory.send_trusted(wire.WORK_CHANNEL, _http_open(front, "t.slow", "/slow"))
    assert (await front.next(_for("t.slow")))[msg.TYPE] == msg.PICKED  # after the scan
    assert (await front.next(_for("t.slow")))[msg.STATUS] == 200
