"""The only module that touches uvicorn's internals; checked when it is imported.

uvicorn's public API is its ``Config`` and ``Server.serve``; the protocol server needs more,
for measured reasons (docs/architecture.md, What a request costs; Third-party internals):

* body-less requests without an asyncio task (services/plain.py): the HTTP protocol's
  ``_start_asgi_task(cycle, app)`` is overridden, its ``tasks`` set keeps the tasks that do
  run, and ``RequestResponseCycle.run_asgi`` answers a request from a loop callback;
* one write per response (services/coalesce.py): the transport given to ``connection_made``
  is wrapped;
* limits on clients (services/limits.py): the parser callbacks are extended and the
  connection's request cycle, flow control, parser and keep-alive timeout are read;
* the runner owns SIGTERM/SIGINT: ``Server.capture_signals`` is replaced by a no-op;
* the keep-alive clock: uvicorn arms a timer after every response and cancels it when the next
  request's bytes arrive (~1 µs of every request); here one timer per connection re-arms
  itself only when it fires (``on_response_complete`` is uvicorn's, but for that clock).

Other modules use the names below (:class:`HttpProtocol`'s methods, ``answer``,
``cut_off``, ...) and never uvicorn's. :data:`HOOKS` lists what is relied on; a uvicorn
release without one of them fails at import with an :class:`ImportError` naming it, instead
of breaking the request path in a way no test names. ``pyproject.toml`` caps uvicorn to
:data:`TESTED` for the same reason.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import operator
import re
from collections.abc import Callable, Coroutine, Generator
from typing import Any

from uvicorn import Config as Config
from uvicorn import Server as _UvicornServer
from uvicorn import __version__ as UVICORN_VERSION
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol, RequestResponseCycle

__all__ = ["HOOKS", "TESTED", "Config", "Cycle", "HttpProtocol", "QuietServer"]

TESTED_RANGE = ">=0.45,<0.56"  # pyproject.toml's requirement (a test keeps the two equal)
TESTED = f"uvicorn {TESTED_RANGE}"

Cycle = RequestResponseCycle  # one request on an HTTP connection
App = Callable[[Any, Any, Any], Coroutine[Any, Any, None]]

# What is relied on: (owner, "method(params)" or "attribute", where it must be found).
# A method is checked for its parameters; an attribute for an assignment in __init__; a
# "calls" entry for the call that makes an override take effect.
HOOKS: tuple[tuple[str, str, str], ...] = (
    ("HttpToolsProtocol", "_start_asgi_task(cycle, app)", "method"),
    ("HttpToolsProtocol", "_start_asgi_task", "calls:on_headers_complete"),
    ("HttpToolsProtocol", "connection_made(transport)", "method"),
    ("HttpToolsProtocol", "connection_lost(exc)", "method"),
    ("HttpToolsProtocol", "data_received(data)", "method"),
    ("HttpToolsProtocol", "on_headers_complete()", "method"),
    ("HttpToolsProtocol", "on_body(body)", "method"),
    ("HttpToolsProtocol", "on_message_complete()", "method"),
    ("HttpToolsProtocol", "handle_websocket_upgrade()", "method"),
    ("HttpToolsProtocol", "on_response_complete()", "method"),
    ("HttpToolsProtocol", "_unset_keepalive_if_required()", "method"),
    ("HttpToolsProtocol", "_unset_keepalive_if_required", "calls:data_received"),
    ("HttpToolsProtocol", "timeout_keep_alive_handler()", "method"),
    ("HttpToolsProtocol", "server_state", "attribute"),
    ("HttpToolsProtocol", "pipeline", "attribute"),
    ("HttpToolsProtocol", "tasks", "attribute"),
    ("HttpToolsProtocol", "loop", "attribute"),
    ("HttpToolsProtocol", "transport", "attribute"),
    ("HttpToolsProtocol", "cycle", "attribute"),
    ("HttpToolsProtocol", "flow", "attribute"),
    ("HttpToolsProtocol", "parser", "attribute"),
    ("HttpToolsProtocol", "headers", "attribute"),
    ("HttpToolsProtocol", "client", "attribute"),
    ("HttpToolsProtocol", "timeout_keep_alive", "attribute"),
    ("RequestResponseCycle", "run_asgi(app)", "method"),
    ("RequestResponseCycle", "send(message)", "method"),
    ("RequestResponseCycle", "scope", "attribute"),
    ("RequestResponseCycle", "waiting_for_100_continue", "attribute"),
    ("RequestResponseCycle", "response_started", "attribute"),
    ("RequestResponseCycle", "response_complete", "attribute"),
    ("RequestResponseCycle", "disconnected", "attribute"),
    ("RequestResponseCycle", "message_event", "attribute"),
    ("Server", "capture_signals()", "method"),
    ("Server", "capture_signals", "calls:serve"),
)


def _cached(sources: dict[Any, str], function: Any) -> str:
    """``function``'s source ("" if there is none to read)."""
    if function not in sources:
        try:
            sources[function] = inspect.getsource(function)
        except (OSError, TypeError):
            sources[function] = ""
    return sources[function]


def missing_hooks(classes: dict[str, type[Any]]) -> list[str]:
    """The :data:`HOOKS` that ``classes`` (``HttpToolsProtocol``, ``RequestResponseCycle``,
    ``Server`` by name) lack, each as "Owner.hook"; [] when all are there."""
    missing = []
    sources: dict[Any, str] = {}
    for owner, hook, kind in HOOKS:
        cls = classes.get(owner)
        name = hook.split("(")[0]
        where = f"{owner}.{hook}"
        if cls is None:
            missing.append(where)
        elif kind == "method":
            params = hook[len(name) + 1 : -1]
            wanted = [p.strip() for p in params.split(",") if p.strip()]
            function = getattr(cls, name, None)
            try:
                got = list(inspect.signature(function).parameters)[1:] if function else None
            except (TypeError, ValueError):
                got = None
            if got is None or got[: len(wanted)] != wanted:
                missing.append(where)
        elif kind == "attribute":
            init = _cached(sources, getattr(cls, "__init__", None))
            if not re.search(rf"self\.{name}\s*(:[^=\n]+)?=", init):
                missing.append(f"{where} (set in __init__)")
        else:  # calls:<method>
            caller = kind.split(":", 1)[1]
            if f"self.{name}(" not in _cached(sources, getattr(cls, caller, None)):
                missing.append(f"{owner}.{caller} calling self.{name}()")
    return missing


def require(classes: dict[str, type[Any]], version: str) -> None:
    """Raise an :class:`ImportError` listing every hook missing from this uvicorn."""
    missing = missing_hooks(classes)
    if missing:
        raise ImportError(
            f"uvicorn {version} lacks what services/uvicorn_bridge.py uses: "
            f"{'; '.join(missing)}. Tested: {TESTED}."
        )


require(
    {
        "HttpToolsProtocol": HttpToolsProtocol,
        "RequestResponseCycle": RequestResponseCycle,
        "Server": _UvicornServer,
    },
    UVICORN_VERSION,
)


class HttpProtocol(HttpToolsProtocol):
    """uvicorn's httptools HTTP/1.1 protocol, with its internals under this kit's names.

    Subclasses override :meth:`wrap_transport` and :meth:`start_request`, and may extend the
    asyncio and parser callbacks listed in :data:`HOOKS` (calling ``super()``)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._idle_since: float | None = None  # loop time the last response ended, if idle
        self._idle_clock: asyncio.TimerHandle | None = None  # the keep-alive clock

    # -- what subclasses override ------------------------------------------------------------

    def wrap_transport(self, transport: asyncio.Transport) -> asyncio.Transport:
        """The transport this connection (and a WebSocket upgraded from it) writes to."""
        return transport

    def start_request(self, cycle: Cycle, app: Any) -> None:
        """A request's head is parsed (or a pipelined one's turn came): run ``app`` on it."""
        self.run_in_task(cycle, app)

    # -- uvicorn's entry points, routed to the above -------------------------------------------

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(self.wrap_transport(transport))

    def _start_asgi_task(self, cycle: Cycle, app: Any) -> None:
        self.start_request(cycle, app)

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        if self._idle_clock is not None:
            self._idle_clock.cancel()
            self._idle_clock = None

    # -- the keep-alive clock: idle time between requests, one timer per connection ------------

    def on_response_complete(self) -> None:
        """uvicorn's (the next pipelined request starts, else the connection idles), with the
        keep-alive clock started lazily: a running clock is left to run."""
        self.server_state.total_requests += 1
        if self.transport.is_closing():
            return
        self._idle_since = None
        self.flow.resume_reading()
        if self.pipeline:
            cycle, app = self.pipeline.pop()
            self._start_asgi_task(cycle, app)
            return
        self._idle_since = self.loop.time()
        if self._idle_clock is None:
            self._idle_clock = self.loop.call_later(self.timeout_keep_alive, self._idle_check)

    def _unset_keepalive_if_required(self) -> None:
        """Bytes arrived (or the connection ends): not idle; the clock sees it when it fires."""
        self._idle_since = None

    def _idle_check(self) -> None:
        """The clock fired: close a connection idle for ``timeout_keep_alive`` s as uvicorn
        does, else wait out the rest of that time from its last response (none while busy)."""
        self._idle_clock = None
        since = self._idle_since
        if since is None:
            return  # a request is in progress: its response's end starts the clock again
        left = since + self.timeout_keep_alive - self.loop.time()
        if left > 0:
            self._idle_clock = self.loop.call_later(left, self._idle_check)
        else:
            self.timeout_keep_alive_handler()

    def __init_subclass__(cls, **kwargs: Any) -> None:
        """uvicorn calls ``_start_asgi_task``: point it at the subclass's ``start_request``
        itself, so the hook adds no call per request."""
        super().__init_subclass__(**kwargs)
        cls._start_asgi_task = cls.start_request  # type: ignore[method-assign]

    # -- uvicorn's internals, named ----------------------------------------------------------

    def run_in_task(self, cycle: Cycle, app: Any) -> None:
        """Run ``app`` on ``cycle`` in a task, as uvicorn runs every request."""
        super()._start_asgi_task(cycle, app)

    def keep(self, task: asyncio.Task[None]) -> None:
        """Hold ``task`` as uvicorn holds its request tasks (awaited at shutdown)."""
        tasks = self.tasks
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    def current_cycle(self) -> Cycle | None:
        """The request cycle last started on this connection (None before the first)."""
        return self.cycle

    def reading_paused(self) -> bool:
        """Reading is paused for backpressure (the app has not taken the body yet)."""
        return bool(self.flow.read_paused)

    def resume_reading(self) -> None:
        self.flow.resume_reading()

    def upgrading(self) -> bool:
        """The request being parsed asks for an upgrade (e.g. to WebSocket)."""
        return self.parser.should_upgrade()

    def request_headers(self) -> list[tuple[bytes, bytes]]:
        """The (lower-cased) headers of the request whose head was just parsed."""
        return self.headers

    def peer(self) -> tuple[str, int] | None:
        """The client's address, if known."""
        return self.client

    def set_keep_alive_timeout(self, seconds: float) -> None:
        self.timeout_keep_alive = seconds  # type: ignore[assignment]


# -- a request cycle -------------------------------------------------------------------------


# The per-request accessors are uvicorn's own callables or C attribute getters: no Python frame
# of ours on the request path (as plain functions, four calls cost ~1 µs of a 20 µs request).

#: ``answer(cycle, app)``: run ``app`` on ``cycle`` as uvicorn's request task would (its
#: errors logged, a 500 if nothing was sent); returns the coroutine for the caller to run.
answer: Callable[[Cycle, App], Coroutine[Any, Any, None]] = RequestResponseCycle.run_asgi
#: ``scope_of(cycle)``: the request's ASGI scope.
scope_of: Callable[[Cycle], Any] = operator.attrgetter("scope")
#: ``send_of(cycle)``: the cycle's ASGI ``send``.
send_of: Callable[[Cycle], Callable[[Any], Coroutine[Any, Any, None]]] = operator.attrgetter("send")
#: ``expects_continue(cycle)``: the client waits for ``100 Continue`` before its body.
expects_continue: Callable[[Cycle], bool] = operator.attrgetter("waiting_for_100_continue")


def response_state(cycle: Cycle) -> tuple[bool, bool]:
    """(started, complete) of the cycle's response."""
    return cycle.response_started, cycle.response_complete


def cut_off(cycle: Cycle) -> None:
    """The client is gone for this request: its ASGI ``receive`` says ``http.disconnect``."""
    cycle.disconnected = True
    cycle.message_event.set()


# -- the server ------------------------------------------------------------------------------


class QuietServer(_UvicornServer):
    """uvicorn's server without its own signal handling (the runner owns SIGTERM/SIGINT:
    uvicorn's handlers, installed with ``signal.signal``, would replace the loop's)."""

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield
