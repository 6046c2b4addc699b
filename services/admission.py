"""How much a worker takes on: work in progress is scarce, open connections only cost memory.

A worker runs one app instance per connection. An instance whose app waits on its client (in
``receive`` for a body part or a frame that has not come, or for the client to read what was
sent: the flow-control window) is *parked*: it holds a task and its memory, no CPU. So two
limits apply, each to what it protects:

- ``concurrency``: instances *at work* (not parked). A worker waits for new connections on
  ``work.asgi`` only while it has fewer than this at work, so CPU-bound load stays queued for
  siblings instead of piling up in one process.
- ``max_connections``: instances open at all, parked or not (memory, and the per-connection
  bookkeeping of the heartbeats). Much larger: 10,000 idle WebSockets are a normal chat site.

A parked instance that wakes up (its client sent something) runs at once even if the worker is
at ``concurrency``: its connection's messages can go to no other worker.
"""

from __future__ import annotations

import logging
import resource
from collections.abc import Callable

from layer.logs import Throttled
from services.metrics import Metrics

CONCURRENCY = 256
MAX_CONNECTIONS = 10_000

log = logging.getLogger("layerkit.worker")
_log = Throttled(log)


class Admission:
    """A worker's counts of open and at-work instances, and whether it may take more.

    ``wake`` is called when an instance parks (a slot came free while no runner may be waiting
    for work); the worker starts a runner then if there is room.
    """

    __slots__ = ("_at", "busy", "concurrency", "max_connections", "metrics", "open", "wake")

    def __init__(
        self,
        metrics: Metrics,
        wake: Callable[[], None],
        concurrency: int = CONCURRENCY,
        max_connections: int = MAX_CONNECTIONS,
    ) -> None:
        self.metrics = metrics
        self.wake = wake
        self.concurrency = concurrency
        self.max_connections = max_connections
        self.busy = 0  # instances at work
        self.open = 0  # instances running, parked or not
        self._at: str | None = None  # the limit the worker last stopped at, until it has room

    def room(self, receiving: int) -> bool:
        """May one more runner wait for new work, with ``receiving`` runners waiting already?"""
        if (
            self.busy + receiving < self.concurrency
            and self.open + receiving < self.max_connections
        ):
            self._at = None
            return True
        if receiving == 0:
            self._reached("connections" if self.open >= self.max_connections else "concurrency")
        return False

    def _reached(self, limit: str) -> None:
        """The worker stops taking new connections at ``limit``: say so once (per stretch)."""
        if self._at == limit:
            return
        self._at = limit
        self.metrics.limit_reached("worker", limit)
        if limit == "connections":
            _log(
                "connections", logging.WARNING,
                "at the connection limit (%d open, --max-connections %d): new connections wait "
                "on work.asgi for another worker, then get 503 / close 1013",
                self.open, self.max_connections,
            )  # fmt: skip
        else:
            _log(
                "concurrency", logging.INFO,
                "%d connections at work (--concurrency %d): new ones wait on work.asgi",
                self.busy, self.concurrency,
            )  # fmt: skip

    def taken(self) -> None:
        self.open += 1
        self.busy += 1

    def finished(self, busy: bool) -> None:
        self.open -= 1
        if busy:
            self.busy -= 1

    def park(self) -> None:
        """An instance waits on its client: its work slot is free for new work."""
        self.busy -= 1
        self.wake()

    def unpark(self) -> None:
        self.busy += 1


def raise_open_files(wanted: int) -> None:
    """Raise this process's soft limit on open files to its hard limit (each client socket is one
    file: the usual soft limit of 1,024 would stop a protocol server long before
    ``--max-connections``), and warn if even the hard limit is below ``wanted``."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else max(soft, wanted + 1024)
    if soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError):  # e.g. above the kernel's nr_open: keep what we have
            target = soft
    if target < wanted:
        logging.getLogger("layerkit").warning(
            "open files are limited to %d (ulimit -n), under --max-connections %d: connections "
            "past it fail to open; raise the limit (docker: --ulimit nofile=...)",
            target, wanted,
        )  # fmt: skip
