"""4. `docker kill` a worker while it holds a WebSocket and an HTTP request: the clients get
close 1011 / 502 within 5 s (the issue's bound), connections on the other worker carry on, and the
restarted worker serves again without any other container restarting. A crash of the worker's
process (SIGKILL from the host) is restarted by the restart policy by itself."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Awaitable
from typing import Any

import pytest
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed

from tests.integration.chat import hear_text, landing_on, new_room, say
from tests.integration.stack import Stack, docker, metric_sum

pytestmark = pytest.mark.integration

FAIL_WITHIN = 5.0  # the bound for a killed worker's clients to hear about it
WORKERS = ("pod-a-worker", "pod-b-worker")
ATTEMPTS = 100  # polls (0.1 s apart) of the workers' in-flight counts for the slow POST


async def owned_by(stack: Stack, worker: str, room: str) -> tuple[ClientConnection, list[Any]]:
    return await landing_on(stack.url("pod-a-protocol"), room, stack.hostname(worker))


class SlowPost:
    """An HTTP/1.1 POST whose chunked body never finishes: the request stays in flight on
    whichever worker took it. Raw asyncio streams, because an HTTP client library would not
    read the response before it has sent the whole body."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def start(cls, url: str, room: str) -> SlowPost:
        host, port = url.removeprefix("http://").split(":")
        reader, writer = await asyncio.open_connection(host, int(port))
        chunk = b'{"user": "slow", '
        writer.write(
            f"POST /rooms/{room}/messages HTTP/1.1\r\nHost: {host}\r\n"
            "Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n".encode()
            + f"{len(chunk):x}\r\n".encode()
            + chunk
            + b"\r\n"
        )
        await writer.drain()
        return cls(reader, writer)

    async def status(self) -> int:
        line = await self.reader.readline()
        return int(line.split()[1])

    def close(self) -> None:
        self.writer.close()


def runs(stack: Stack, service: str) -> tuple[str, int]:
    """When a container last started and how often it restarted: equal means not restarted."""
    state = stack.state(service)
    return state["started"], state["restarts"]


async def inflight(stack: Stack, worker: str) -> float:
    text = await asyncio.to_thread(stack.admin_get, worker, "/metrics")
    return metric_sum(text, "kit_inflight_connections")


async def holder(stack: Stack, before: dict[str, float]) -> str:
    """The worker whose in-flight count rose above ``before``: it took the slow POST."""
    for _ in range(ATTEMPTS):
        for worker, count in before.items():
            if await inflight(stack, worker) > count:
                return worker
        await asyncio.sleep(0.1)
    raise AssertionError(f"no worker shows the slow POST in flight (before: {before})")


async def test_killed_worker_fails_fast_and_restarts_alone(stack: Stack) -> None:
    room = new_room("kill")
    # An HTTP request in flight: whichever worker takes it is the victim. (The work channel
    # goes to the worker that has waited longest, so a quiet worker takes all new work while
    # the other is busy: choosing the victim in advance would leave this to chance.)
    before = {w: await inflight(stack, w) for w in WORKERS}
    posts = [await SlowPost.start(stack.url("pod-a-protocol"), room)]
    victim = await holder(stack, before)
    others = {s: runs(stack, s) for s in stack.services() if s != victim}
    owned, elsewhere = await owned_by(stack, victim, room)

    docker("kill", stack.container(victim))
    killed = time.monotonic()

    async def timed(outcome: Awaitable[Any]) -> tuple[Any, float]:
        try:
            result = await outcome
        except ConnectionClosed as closed:
            result = closed
        return result, time.monotonic() - killed

    ws_task = asyncio.create_task(timed(owned.recv()))
    post_tasks = [asyncio.create_task(timed(post.status())) for post in posts]
    done, pending = await asyncio.wait([ws_task, *post_tasks], timeout=FAIL_WITHIN)
    for task in pending:
        task.cancel()
    for post in posts:
        post.close()
    assert ws_task in done, f"the victim's WebSocket was not closed within {FAIL_WITHIN} s"
    closed, ws_after = ws_task.result()
    assert isinstance(closed, ConnectionClosed), closed
    assert closed.rcvd is not None and closed.rcvd.code == 1011
    answered = [task.result() for task in post_tasks if task in done]
    assert answered, f"no in-flight POST was answered within {FAIL_WITHIN} s"
    assert [status for status, _ in answered] == [502] * len(answered)
    http_after = max(after for _, after in answered)

    # Connections held by the other worker never noticed.
    for n, ws in enumerate(elsewhere):
        await say(ws, "survivor", f"still here {n}")
        await hear_text(ws, f"still here {n}")
        await ws.close()

    # Started again (`docker kill` counts as a manual stop, so no restart policy applies), it
    # takes work again; nothing else restarted.
    docker("start", stack.container(victim))
    await asyncio.to_thread(stack.wait_healthy, victim)
    again, rest = await owned_by(stack, victim, new_room("back"))
    await asyncio.gather(again.close(), *(ws.close() for ws in rest))

    # A crash (the process SIGKILLed, not `docker kill`) is what the restart policy is for.
    restarts = stack.state(victim)["restarts"]
    os.kill(stack.inspect(victim)["State"]["Pid"], signal.SIGKILL)
    await asyncio.to_thread(stack.wait_restarted, victim, restarts + 1)
    await asyncio.to_thread(stack.wait_healthy, victim)
    again, rest = await owned_by(stack, victim, new_room("crash"))
    await asyncio.gather(again.close(), *(ws.close() for ws in rest))
    assert {s: runs(stack, s) for s in others} == others
    print(
        f"kill: WebSocket closed 1011 after {ws_after:.2f} s, HTTP 502 after {http_after:.2f} s; "
        f"{victim} serves again after docker start, and after a crash the restart policy "
        "brought it back; no other container restarted"
    )
