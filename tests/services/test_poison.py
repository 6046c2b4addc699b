"""Poison messages, with real processes over IPC and Redis: whatever lands on a channel a service
reads (the work channel, a worker's own channel, a protocol server's reply channel; alone or
inside a ``k.batch``) is counted in ``kit_bad_messages_total{role,reason}``, logged (one line per
reason, rate limited) and dropped, and the process goes on serving; ``/healthz`` fails only when
a loop the process depends on has died.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import websockets

from layer.base import BaseChannelLayer
from layer.config import get_channel_layer
from services import messages as msg
from services import wire
from tests.services import faults
from tests.services.conftest import CROSS, Served, StackFactory, serve
from tests.services.procs import ROOT, Service, Stack, closed_code, wait_until

pytestmark = pytest.mark.timeout(180)

BAD = "kit_bad_messages_total"
GARBAGE = b"\xc1 is no msgpack"  # what the layer takes off the channel but cannot decode
_ADDRESS = ["127.0.0.1", 8000]
HTTP_SCOPE = ["http", {"version": "3.0"}, "1.1", "http", _ADDRESS, _ADDRESS, "", "GET", "/json",
              b"/json", b"", []]  # fmt: skip
WS_SCOPE = ["websocket", {"version": "3.0"}, "1.1", "ws", _ADDRESS, _ADDRESS, "", "/echo",
            b"/echo", b"", [], []]  # fmt: skip
PEER = "proto.poison!nobody"  # a well-formed channel nobody reads


def _later() -> float:
    return time.time() + 60


def http_open(**fields: Any) -> dict[str, Any]:
    """A well-formed ``k.http`` nobody waits for, with ``fields`` replaced (None: removed)."""
    return _with(msg.http_open("poison.1", PEER, HTTP_SCOPE, b"", False, _later()), fields)


def _with(message: dict[str, Any], fields: dict[str, Any]) -> dict[str, Any]:
    key_of = {"conn": msg.CONN, "reply": msg.REPLY_CHANNEL, "scope": msg.SCOPE,
              "data": msg.DATA, "text": msg.TEXT, "more": msg.MORE, "deadline": msg.DEADLINE,
              "worker": msg.WORKER, "status": msg.STATUS, "headers": msg.HEADERS,
              "subprotocol": msg.SUBPROTOCOL, "fragments": msg.MORE_FRAGMENTS,
              "code": msg.CODE, "reason": msg.REASON, "consumed": msg.CONSUMED,
              "messages": msg.MESSAGES}  # fmt: skip
    message = dict(message)
    for name, value in fields.items():
        if value is None:
            message.pop(key_of[name], None)
        else:
            message[key_of[name]] = value
    return message


# (what is sent, the reason it must be counted under); bytes go to the layer as they are.
NOT_MAPS = [(5, "not_a_dict"), ("k.http", "not_a_dict"), ([msg.HTTP_OPEN], "not_a_dict"),
            (None, "not_a_dict"), (GARBAGE, "undecodable")]  # fmt: skip
UNKNOWN = [({}, "unknown_type"), ({msg.TYPE: 7}, "unknown_type"),
           ({msg.TYPE: "k.nope", msg.CONN: "x.1"}, "unknown_type")]  # fmt: skip
WORK_CASES = [
    *NOT_MAPS, *UNKNOWN,
    (msg.response("poison.1", "worker.w!1", 200, [], b"", False), "wrong_channel"),
    (http_open(scope="GET / HTTP/1.1"), "bad_scope"),  # issue 19: killed the runner silently
    (http_open(deadline="soon"), "bad_deadline"),  # issue 19: killed the runner silently
    (http_open(deadline=None), "bad_deadline"),
    (http_open(deadline=True), "bad_deadline"),
    (http_open(conn=7), "bad_conn"),
    (http_open(reply="no such channel"), "bad_reply_channel"),
    (http_open(reply="work.asgi"), "bad_reply_channel"),  # not a process-specific channel
    (http_open(data="text"), "bad_body"),
    (http_open(more="yes"), "bad_more"),
    (http_open(scope=HTTP_SCOPE[:5]), "bad_scope"),
    (http_open(scope=[*HTTP_SCOPE[:5], 5, *HTTP_SCOPE[6:]]), "bad_scope"),  # client: 5
    (http_open(scope={"type": "websocket"}), "bad_scope"),
    (msg.ws_open("poison.2", PEER, HTTP_SCOPE, _later()), "bad_scope"),
]  # fmt: skip
WORKER_CASES = [
    *NOT_MAPS, *UNKNOWN,
    (http_open(), "wrong_channel"),
    ({msg.TYPE: msg.HEARTBEAT}, "bad_reply_channel"),
    (msg.protocol_heartbeat(5), "bad_reply_channel"),  # type: ignore[arg-type]
    (msg.protocol_heartbeat("no such channel"), "bad_reply_channel"),
    (msg.ack("poison.1", "8"), "bad_consumed"),  # type: ignore[arg-type]
    (msg.request_body("poison.1", "text", False), "bad_body"),  # type: ignore[arg-type]
    ({**msg.frame(msg.WS_IN, "poison.1", "t", False), msg.DATA: b"b"}, "bad_frame"),
    ({msg.TYPE: msg.WS_IN, msg.CONN: "poison.1", msg.MORE_FRAGMENTS: False}, "bad_frame"),
    (msg.disconnect("poison.1", "1000"), "bad_code"),  # type: ignore[arg-type]
    (msg.batch(5), "bad_messages"),  # type: ignore[arg-type]
]  # fmt: skip
REPLY_CASES = [
    *NOT_MAPS, *UNKNOWN,
    (http_open(), "wrong_channel"),
    ({msg.TYPE: msg.HEARTBEAT}, "bad_worker"),
    (msg.worker_heartbeat(5), "bad_worker"),  # type: ignore[arg-type]
    (msg.hello("worker-without-bang"), "bad_worker"),
    (msg.response("poison.1", "worker.w!1", "200", [], b"", False), "bad_status"),  # type: ignore[arg-type]
    (msg.response("poison.1", "worker.w!1", 9999, [], b"", False), "bad_status"),
    (msg.response("poison.1", "worker.w!1", 200, [["a", "b"]], b"", False), "bad_headers"),
    (msg.response("poison.1", "worker.w!1", 200, [[b"a"]], b"", False), "bad_headers"),
    (msg.response(7, "worker.w!1", 200, [], b"", False), "bad_conn"),  # type: ignore[arg-type]
    (msg.response_body("poison.1", b"", "no"), "bad_more"),  # type: ignore[arg-type]
    ({**msg.frame(msg.WS_OUT, "poison.1", "t", False), msg.DATA: b"b"}, "bad_frame"),
    (msg.ws_accept("poison.1", "worker.w!1", 5, None), "bad_subprotocol"),  # type: ignore[arg-type]
    (msg.ws_close("poison.1", "x", ""), "bad_code"),  # type: ignore[arg-type]
    (msg.ws_close("poison.1", 1000, 5), "bad_reason"),  # type: ignore[arg-type]
    (msg.app_error("poison.1", 42), "bad_code"),
    (msg.ack("poison.1", None), "bad_consumed"),  # type: ignore[arg-type]
    (msg.batch("x"), "bad_messages"),  # type: ignore[arg-type]
]  # fmt: skip


def _batch_of_everything(cases: list[tuple[Any, str]]) -> tuple[dict[str, Any], list[str]]:
    """One ``k.batch`` holding a copy of every (non-bytes) case and a batch inside it."""
    inside = [junk for junk, _ in cases if not isinstance(junk, bytes)]
    reasons = [reason for junk, reason in cases if not isinstance(junk, bytes)]
    return msg.batch([*inside, msg.batch([])]), [*reasons, "nested_batch"]


@contextlib.asynccontextmanager
async def injector(
    stack: Stack, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[BaseChannelLayer]:
    """A layer of this test process on the same backend as ``stack``'s services."""
    for key, value in stack.backend.env.items():
        monkeypatch.setenv(key, value)
    layer = get_channel_layer("default", ROOT / stack.backend.config)
    try:
        yield layer
    finally:
        with contextlib.suppress(Exception):
            await layer.close()


async def put(layer: BaseChannelLayer, channel: str, junk: Any) -> None:
    """Put ``junk`` on ``channel`` as it is: bytes as the stored payload, anything else
    encoded without the layer's checks."""
    if isinstance(junk, bytes):
        await layer._push(channel, junk, layer.get_capacity(channel))  # type: ignore[attr-defined]
    else:
        await layer.send_trusted(channel, junk)


def whole_log(service: Service) -> str:
    assert service.log is not None
    return service.log.read_text(errors="replace")


def own_channel(service: Service) -> str:
    pattern = r"reply channel (\S+)" if service.role == "protocol" else r"worker channel (\S+),"
    found = re.search(pattern, whole_log(service))
    assert found, whole_log(service)
    return found.group(1)


def bad_counts(service: Service, role: str) -> Counter[str]:
    counts: Counter[str] = Counter()
    for line in service.admin("/metrics").text.splitlines():
        found = re.match(rf"{BAD}{{(.*)}} (\S+)$", line)
        labels = dict(re.findall(r'(\w+)="([^"]*)"', found.group(1))) if found else {}
        if found and labels["role"] == role:
            counts[labels["reason"]] = int(float(found.group(2)))
    return counts


async def counted(service: Service, role: str, expected: Counter[str]) -> None:
    """Wait until ``service`` has counted exactly ``expected``."""
    with contextlib.suppress(TimeoutError):
        await asyncio.to_thread(
            wait_until, lambda: bad_counts(service, role) == expected, "the counts", 10
        )
    assert bad_counts(service, role) == expected, whole_log(service)[-3000:]


async def still_serving(served: Served) -> None:
    """Real HTTP (body-less and streamed bodies) and WebSocket traffic, then /healthz 200."""
    async with httpx.AsyncClient(base_url=served.url, timeout=10) as client:
        for _ in range(5):
            assert (await client.get("/json")).status_code == 200
        body = b"streamed " * 100_000  # several k.body messages on the worker's channel
        echoed = await client.post("/echo-body", content=body)
        assert echoed.status_code == 200 and echoed.content == body
    async with websockets.connect(f"{served.ws_url}/echo") as ws:
        for text in ("one", "two"):
            await ws.send(text)
            assert await asyncio.wait_for(ws.recv(), 10) == text
    for service in (served.front, *served.workers):
        assert service.admin("/healthz").status_code == 200, service.output()


@pytest.mark.parametrize("name", CROSS)
async def test_poison_on_every_channel_is_counted_logged_and_dropped(
    stacks: StackFactory, events: Path, name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    served = serve(stacks, name, events, workers=1)
    front, worker = served.front, served.workers[0]
    plan = [
        (worker, "worker", wire.WORK_CHANNEL, WORK_CASES),
        (worker, "worker", own_channel(worker), WORKER_CASES),
        (front, "protocol", own_channel(front), REPLY_CASES),
    ]
    expected = {"worker": Counter[str](), "protocol": Counter[str]()}
    async with injector(served.stack, monkeypatch) as layer:
        for _, role, channel, cases in plan:
            for junk, reason in cases:
                await put(layer, channel, junk)
                expected[role][reason] += 1
            if channel != wire.WORK_CHANNEL:  # never batched: a batch there is wrong_channel
                batch, reasons = _batch_of_everything(cases)
                await put(layer, channel, batch)
                expected[role].update(reasons)
        await put(layer, wire.WORK_CHANNEL, msg.batch([http_open()]))
        expected["worker"]["wrong_channel"] += 1
    await counted(worker, "worker", expected["worker"])
    await counted(front, "protocol", expected["protocol"])
    await still_serving(served)
    for service, role, _, cases in plan:
        log = whole_log(service)
        for reason in {reason for _, reason in cases}:
            assert f"[{reason}]" in log, (role, reason, log[-3000:])
    log = whole_log(worker)
    assert (
        "ignoring a malformed message of type 'k.http' on work.asgi: field 's' (scope) must be "
        "list or tuple or dict, got str [bad_scope]" in log
    )
    assert "field 'd' (deadline) must be int or float, got str [bad_deadline]" in log
    assert "ignoring a malformed message of type <int> on work.asgi: not a map: int" in log
    assert "that the layer could not decode" in log
    assert "a batch inside a batch [nested_batch]" in log
    assert "field 'st' (status) must be int, got str [bad_status]" in whole_log(front)
    for service in (front, worker):
        assert "Traceback" not in whole_log(service), whole_log(service)[-3000:]


@pytest.mark.parametrize("name", CROSS)
async def test_a_flood_of_one_problem_costs_one_log_line(
    stacks: StackFactory, events: Path, name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    served = serve(stacks, name, events, workers=1)
    worker = served.workers[0]
    async with injector(served.stack, monkeypatch) as layer:
        for _ in range(500):
            await put(layer, wire.WORK_CHANNEL, http_open(scope="GET"))
    await counted(worker, "worker", Counter(bad_scope=500))
    assert whole_log(worker).count("[bad_scope]") == 1  # the next one may go out in 10 s
    await still_serving(served)


@pytest.mark.parametrize("name", CROSS)
async def test_a_malformed_message_for_a_live_connection_fails_only_that_one(
    stacks: StackFactory, events: Path, name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A peer that sends a connection something unreadable (another version, a bug) fails that
    connection at once (502 / 1011) instead of leaving its client waiting; others go on."""
    served = serve(stacks, name, events, workers=1)
    front, worker = served.front, served.workers[0]
    reply = own_channel(front)
    prefix = reply[len("proto.") : reply.index("!")] + "."  # connection ids: <client_id>.<n>
    async with (
        injector(served.stack, monkeypatch) as layer,
        httpx.AsyncClient(base_url=served.url, timeout=30) as client,
    ):
        # Connection 0: a WebSocket that a worker's k.resp (an HTTP answer) reaches.
        async with websockets.connect(f"{served.ws_url}/whoami?id=ws0") as ws:
            assert int(await ws.recv()) == worker.pid
            await put(layer, reply, msg.response(prefix + "0", "worker.w!1", 200, [], b"", False))
            assert await closed_code(ws, 5) == 1011
        # Connection 1: a WebSocket whose worker sends a frame without a readable "more".
        async with websockets.connect(f"{served.ws_url}/whoami?id=ws1") as ws:
            assert int(await ws.recv()) == worker.pid
            await put(layer, reply, {**msg.frame(msg.WS_OUT, prefix + "1", "x", False),
                                     msg.MORE_FRAGMENTS: "no"})  # fmt: skip
            assert await closed_code(ws, 5) == 1011
        # Connection 2: a WebSocket whose protocol server sends its worker a broken frame.
        async with websockets.connect(f"{served.ws_url}/whoami?id=ws2") as ws:
            assert int(await ws.recv()) == worker.pid
            await put(layer, own_channel(worker), {**msg.frame(msg.WS_IN, prefix + "2", "x", False),
                                                   msg.MORE_FRAGMENTS: "no"})  # fmt: skip
            assert await closed_code(ws, 5) == 1011
        # Connection 3: a body-less request waiting for its answer gets an unreadable one.
        slow = asyncio.create_task(client.get("/sleep", params={"s": "8", "id": "http3"}))
        await asyncio.to_thread(
            wait_until, lambda: events.exists() and "start http3" in events.read_text(), "start"
        )
        await put(layer, reply, msg.response(prefix + "3", "worker.w!1", "200", [], b"", False))  # type: ignore[arg-type]
        async with asyncio.timeout(5):
            assert (await slow).status_code == 502
    disconnect = ["disconnect", "ws2", str(worker.pid), "1011"]  # the app was told
    await asyncio.to_thread(
        wait_until, lambda: disconnect in map(str.split, events.read_text().splitlines()), "ws2"
    )
    await counted(front, "protocol", Counter(wrong_connection=1, bad_more_fragments=1,
                                             bad_status=1))  # fmt: skip
    await counted(worker, "worker", Counter(bad_more_fragments=1))
    assert "its worker sent a malformed k.resp message" in whole_log(front)
    assert "its protocol server sent a malformed k.wsin" in whole_log(worker)
    await still_serving(served)


@pytest.mark.parametrize("name", CROSS)
async def test_healthz_fails_when_a_loop_dies(
    stacks: StackFactory, events: Path, name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each process runs with a bug planted in its loops (tests/services/faults.py): until it
    is triggered /healthz is 200; once the loop has died, /healthz is 503 and names it."""
    stack = stacks(name)
    env = {"TESTAPP_EVENTS": str(events), "KIT_PICKUP_TIMEOUT": "1"}
    runner = stack.add("worker", module="tests.services.faults", **env)
    front = stack.add("protocol", module="tests.services.faults", **env)
    routing = stack.add("worker", module="tests.services.faults", **env)
    services = {"worker-runner": runner, "protocol-dispatch": front, "worker-dispatch": routing}
    for service in services.values():
        assert service.admin("/healthz").status_code == 200
    async with injector(stack, monkeypatch) as layer:
        await layer.group_send(wire.PROTOCOL_GROUP, msg.worker_heartbeat(faults.DIE))
        await layer.send(own_channel(routing), msg.protocol_heartbeat(faults.DIE))
        async with httpx.AsyncClient(base_url=front.url, timeout=10) as client:
            for _ in range(20):  # until one reaches a runner of the planted worker
                await client.get(faults.DIE_PATH)
                if runner.admin("/healthz").status_code == 503:
                    break
    for loop, service in services.items():
        await asyncio.to_thread(
            wait_until, lambda s=service: s.admin("/healthz").status_code == 503, f"{loop} dead"
        )
        health = service.admin("/healthz")
        assert f"dead: {loop} raised Fault: a bug planted by" in health.text, health.text
        assert service.admin("/readyz").status_code in (200, 503)  # still answers
        assert f"{loop} raised Fault" in whole_log(service) and "Traceback" in whole_log(service)
