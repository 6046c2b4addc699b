"""The ASGI app the service tests run in workers: the demo plus endpoints that misbehave on cue.

Events the tests must see from inside the worker (a request started, the app got its disconnect)
are appended to the file named by ``TESTAPP_EVENTS`` as ``<event> <id> <pid> [code]`` lines.
"""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any
from urllib.parse import parse_qs

from services.demo.app import application as demo

Scope = dict[str, Any]


def record(event: str, ident: str, *extra: object) -> None:
    path = os.environ.get("TESTAPP_EVENTS")
    if path:
        with open(path, "a", encoding="utf-8") as events:
            print(event, ident, os.getpid(), *extra, file=events, flush=True)


def _query(scope: Scope) -> dict[str, str]:
    return {k: v[0] for k, v in parse_qs(scope.get("query_string", b"").decode()).items()}


async def application(scope: Scope, receive: Any, send: Any) -> None:
    path = scope.get("path", "")
    if scope["type"] == "http" and path in _HTTP:
        await _HTTP[path](scope, receive, send)
    elif scope["type"] == "websocket" and path in _WS:
        await _WS[path](scope, receive, send)
    else:
        await demo(scope, receive, send)


async def _start(send: Any, status: int = 200, **headers: str) -> None:
    pairs = [(b"content-type", b"application/octet-stream")]
    pairs += [(k.replace("_", "-").encode(), v.encode()) for k, v in headers.items()]
    await send({"type": "http.response.start", "status": status, "headers": pairs})


async def sleep(scope: Scope, receive: Any, send: Any) -> None:
    """Answer after ``s`` seconds (the app keeps its slot meanwhile)."""
    query = _query(scope)
    record("start", query.get("id", "-"))
    await asyncio.sleep(float(query.get("s", "1")))
    await _start(send, pid=str(os.getpid()))
    await send({"type": "http.response.body", "body": b"slept"})
    record("done", query.get("id", "-"))


async def block(scope: Scope, receive: Any, send: Any) -> None:
    """Block the whole event loop for ``s`` seconds (CPU-bound work done wrong), then answer."""
    time.sleep(float(_query(scope).get("s", "1")))  # noqa: ASYNC251 - the point of it
    await _start(send)
    await send({"type": "http.response.body", "body": b"blocked"})


async def echo_body(scope: Scope, receive: Any, send: Any) -> None:
    """Stream the request body back as it arrives (both directions chunked)."""
    await _start(send)
    while True:
        event = await receive()
        if event["type"] == "http.disconnect":
            return
        more = event.get("more_body", False)
        await send(
            {"type": "http.response.body", "body": event.get("body", b""), "more_body": more}
        )
        if not more:
            return


async def big(scope: Scope, receive: Any, send: Any) -> None:
    """``n`` bytes of a repeating pattern in one ``send`` (the worker must split it)."""
    size = int(_query(scope).get("n", "1000000"))
    await _start(send)
    await send(
        {"type": "http.response.body", "body": (bytes(range(256)) * (size // 256 + 1))[:size]}
    )


async def stream(scope: Scope, receive: Any, send: Any) -> None:
    """Headers first, then ``n`` small chunks 50 ms apart, then the end."""
    count = int(_query(scope).get("n", "3"))
    await _start(send)
    for index in range(count):
        await send({"type": "http.response.body", "body": b"%d\n" % index, "more_body": True})
        await asyncio.sleep(0.05)
    await send({"type": "http.response.body", "body": b"end\n"})


async def stream_until_gone(scope: Scope, receive: Any, send: Any) -> None:
    """Stream ticks until ``receive`` says the client left (as an SSE endpoint would)."""
    ident = _query(scope).get("id", "-")
    await _start(send)
    gone = asyncio.Event()

    async def watch() -> None:
        while (await receive())["type"] != "http.disconnect":
            pass
        gone.set()

    watcher = asyncio.create_task(watch())
    while not gone.is_set():
        await send({"type": "http.response.body", "body": b"tick\n", "more_body": True})
        await asyncio.sleep(0.02)
    await watcher
    record("gone", ident)


async def read_body(scope: Scope, receive: Any, send: Any) -> None:
    """Read the whole body, then answer its length; a client that leaves first is recorded
    with the bytes that had arrived (``cut <id> <pid> <bytes>``)."""
    ident, size = _query(scope).get("id", "-"), 0
    while True:
        event = await receive()
        if event["type"] == "http.disconnect":
            record("cut", ident, size)
            return
        size += len(event.get("body", b""))
        if not event.get("more_body", False):
            break
    await _start(send)
    await send({"type": "http.response.body", "body": b"%d" % size})


async def late_body(scope: Scope, receive: Any, send: Any) -> None:
    """Headers at once, the body only once the file named by ``go`` exists (an SSE stream or
    a long poll: the client must get the headers without waiting for the first chunk)."""
    go = _query(scope)["go"]
    await _start(send)
    for _ in range(1500):  # 30 s at most: bounds a hung test
        if await asyncio.to_thread(os.path.exists, go):
            break
        await asyncio.sleep(0.02)
    await send({"type": "http.response.body", "body": b"late\n", "more_body": True})
    await send({"type": "http.response.body", "body": b"end\n"})


async def crash(scope: Scope, receive: Any, send: Any) -> None:
    raise RuntimeError("the test app crashes on purpose")


async def wrong_types(scope: Scope, receive: Any, send: Any) -> None:
    """Sends a str body (ASGI wants bytes): the worker must refuse it, naming the key."""
    await _start(send)
    await send({"type": "http.response.body", "body": "not bytes"})


async def huge_headers(scope: Scope, receive: Any, send: Any) -> None:
    """A header of ``n`` bytes: more than a small layer's message size."""
    size = int(_query(scope).get("n", "100000"))
    await _start(send, **{"x-huge": "h" * size})
    await send({"type": "http.response.body", "body": b"never seen"})


async def ws_whoami(scope: Scope, receive: Any, send: Any) -> None:
    """Accept, say which worker pid holds the socket, then echo until the client leaves."""
    ident = _query(scope).get("id", "-")
    await receive()
    await send({"type": "websocket.accept"})
    record("connect", ident)
    await send({"type": "websocket.send", "text": str(os.getpid())})
    while True:
        event = await receive()
        if event["type"] == "websocket.disconnect":
            record("disconnect", ident, event.get("code"))
            return
        await send({**event, "type": "websocket.send"})


_HTTP = {
    "/sleep": sleep,
    "/block": block,
    "/echo-body": echo_body,
    "/big": big,
    "/stream": stream,
    "/stream-until-gone": stream_until_gone,
    "/read-body": read_body,
    "/late-body": late_body,
    "/crash": crash,
    "/wrong-types": wrong_types,
    "/huge-headers": huge_headers,
}
_WS = {"/whoami": ws_whoami}
