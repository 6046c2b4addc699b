"""Body-less HTTP requests relayed without an asyncio task of their own.

uvicorn runs every request as a task around the ASGI app: created, stepped to send ``k.http``,
parked on the reply, woken and stepped again to write the response. A request without a body
(most GETs) needs none of that in the protocol server: the request is whole once its headers
are parsed, and the worker's answer usually arrives whole, as one ``k.resp``. So the protocol
server's HTTP protocol hands such a request's ``RequestResponseCycle`` to the protocol server,
which sends ``k.http`` from a loop callback and writes the answer through the cycle's own
``send`` when it comes: uvicorn still frames, validates and logs every response, and keep-alive,
pipelining, HEAD, ``Connection: close`` and shutdown work as for any request. Anything but a
whole answer (``k.pick`` from a slow app, a streamed response) hands the request to the ASGI
path, a uvicorn task running the protocol server, at the point it has reached.

Each step runs one loop turn after the event that prompts it, when the task's step would have:
done at once instead (inside ``data_received``, inside the reply's routing) the requests of
one turn stop leaving together, and over Redis the smaller batches cost more than the task
saved (measured; docs/architecture.md, What a request costs).
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Coroutine, Iterable
from typing import Any, Protocol

from layer.messages import Message
from services import messages as msg
from services import replies
from services import uvicorn_bridge as bridge
from services.connection import Conn
from services.eager import eager
from services.limits import LimitedHttpToolsProtocol, declared_length
from services.uvicorn_bridge import Cycle

Receive = Any
Send = Any


class Owner(Protocol):
    """What a plain request needs of the protocol server."""

    def finish(self, conn: Conn, status: int, started: float) -> None: ...

    async def resume(
        self, conn: PlainRequest, scope: dict[str, Any], receive: Receive, send: Send
    ) -> None: ...


class PlainRequest(Conn):
    """A body-less request waiting for its answer; the answer is written by :meth:`put`."""

    __slots__ = ("cycle", "handed", "http", "owner", "started")

    def __init__(
        self,
        conn_id: str,
        loop: asyncio.AbstractEventLoop,
        cycle: Cycle,
        http: BridgeHttpProtocol,
        owner: Owner,
    ) -> None:
        super().__init__(conn_id, loop)
        self.cycle = cycle
        self.http = http
        self.owner = owner
        self.started = time.perf_counter()
        self.handed = False  # True once a uvicorn task relays it (its inbox is read then)

    def put(self, message: Message) -> None:
        if self.handed:
            super().put(message)
            return
        kind = message[msg.TYPE]
        if kind == msg.RESPONSE and not message[msg.MORE]:
            self.http.later(bridge.answer(self.cycle, functools.partial(_answer, message)))
            self.owner.finish(self, message[msg.STATUS], self.started)
        elif kind == msg.FAIL or kind == msg.APP_ERROR:  # as the ASGI path answers them
            code = msg.code_of(message, 500)
            self.http.later(bridge.answer(self.cycle, functools.partial(_failure, code)))
            self.owner.finish(self, code, self.started)
        else:
            self.handed = True
            super().put(message)
            self.http.spawn(self.cycle, functools.partial(self.owner.resume, self))

    async def refuse(self, why: str) -> None:
        """The work channel did not take the request: 503, try again later."""
        status = await replies.refuse(bridge.send_of(self.cycle), why)
        self.owner.finish(self, status, self.started)


async def _answer(message: Message, scope: Any, receive: Receive, send: Send) -> None:
    status, headers = message[msg.STATUS], message[msg.HEADERS]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": message[msg.DATA]})


async def _failure(code: int, scope: Any, receive: Receive, send: Send) -> None:
    await replies.failure(send, code)


def bodyless(headers: Iterable[tuple[bytes, bytes]]) -> bool:
    """Whether a request with these (lower-cased) headers has no body."""
    return declared_length(headers) == 0


class BridgeHttpProtocol(LimitedHttpToolsProtocol):
    """The protocol server's HTTP/1.1 protocol: body-less requests go to ``relay_plain``."""

    def start_request(self, cycle: Cycle, app: Any) -> None:
        relay = getattr(app, "relay_plain", None)  # None: uvicorn's 503 app at its limit
        if (
            relay is not None
            and not bridge.expects_continue(cycle)
            and bodyless(bridge.scope_of(cycle)["headers"])
        ):
            relay(cycle, self)
        else:
            self.run_in_task(cycle, app)

    def spawn(self, cycle: Cycle, app: Any) -> None:
        """Run ``app`` on ``cycle`` in a uvicorn task, as uvicorn runs every request."""
        self.run_in_task(cycle, app)

    def later(self, coro: Coroutine[Any, Any, None]) -> None:
        """Run ``coro`` on the next loop turn, as a task's step would; a task finishes it only
        if it has to wait (a full write buffer, a send waiting for Redis)."""
        self.loop.call_soon(self._step, coro)

    def _step(self, coro: Coroutine[Any, Any, None]) -> None:
        task = eager(coro)
        if task is not None:  # kept, and awaited at shutdown, like uvicorn's own tasks
            self.keep(task)
