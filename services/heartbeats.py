"""Heartbeats sent from a thread of their own, so that a busy event loop does not look dead.

A peer gives up another peer's connections when it has not heard from it for three heartbeats
(``services/liveness.py``). The beats used to go out from the role's check loop, on its event
loop: a worker whose loop turns took 1-2 s (a broadcast to 5,000 members of a chat room on the
2-core benchmark machine, the machine also busy) sent none for over 3 s, and its protocol server
dropped all 5,000 connections as if the worker had died; the clients then reconnect into the
same overload. Busy is not dead, so the beats come from a thread with an event loop of its own
(the layers are safe to use from several threads' loops), which keeps beating while the role's
loop keeps checking in, however late. A loop that has not checked in for ``STUCK_AFTER``
heartbeats is stuck rather than busy, and the beats stop: its peers then give its connections
up, as they do for a dead process. (Kafka's consumer does the same: heartbeats from a
background thread, and a separate limit on the time between polls.)
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Iterable

from layer.base import BaseChannelLayer
from layer.messages import Message
from services.background import OneInFlight

STUCK_AFTER = 30  # heartbeats without a check from the role's loop: stuck, stop beating


class Heartbeats:
    """The beats of one role to its peers, sent every ``interval`` seconds from a thread."""

    def __init__(self, layer: BaseChannelLayer, interval: float, log: logging.Logger) -> None:
        self._layer = layer
        self._interval = interval
        self._stuck_after = STUCK_AFTER * interval
        self._log = log
        self._peers: frozenset[str] = frozenset()  # replaced whole: the thread reads it
        self._beat: Message = {}
        self._checked = 0.0  # time.monotonic() of the role loop's last check
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None  # the thread's, once it runs
        self._wake: asyncio.Event | None = None
        self._stopping = threading.Event()
        # A layer of one process (in-memory) is not safe to use from another thread, and no
        # peer of it can die alone: its beats (to peers only tests make up) stay on the loop.
        self._inline = None if layer.cross_process else OneInFlight(log)

    def update(self, peers: Iterable[str], beat: Message) -> None:
        """Called by the role's loop at each check: whom to beat, with what (and that this
        loop still turns)."""
        self._peers = frozenset(peers)
        self._beat = beat
        self._checked = time.monotonic()
        if self._inline is not None:
            for peer in self._peers:
                self._inline.run(peer, self._layer.send_trusted(peer, beat))
        elif self._thread is None and self._peers and not self._stopping.is_set():
            self._thread = threading.Thread(
                target=asyncio.run, args=(self._run(),), name="heartbeats", daemon=True
            )
            self._thread.start()

    def new(self, peer: str) -> bool:
        """Whether ``add`` would start beating ``peer`` (a set lookup: the role asks for each
        connection it takes, before it makes a beat)."""
        return peer not in self._peers and self._inline is None

    def add(self, peer: str, beat: Message) -> None:
        """A connection of the role now depends on ``peer`` (``new``): beat it from now on,
        not from the next check (the role's loop may be busy until then)."""
        self.update(self._peers | {peer}, beat)

    def stuck(self) -> bool:
        """The role's loop has not checked in for ``STUCK_AFTER`` heartbeats."""
        return time.monotonic() - self._checked > self._stuck_after

    async def _run(self) -> None:
        self._wake = asyncio.Event()
        self._loop = asyncio.get_running_loop()
        sends = OneInFlight(self._log)  # a peer on an unreachable shard delays no other's beat
        while not self._stopping.is_set():
            if not self.stuck():
                beat = self._beat
                for peer in self._peers:
                    sends.run(peer, self._layer.send_trusted(peer, beat))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self._interval)
        await sends.cancel()

    async def stop(self) -> None:
        """Stop beating (before the layer closes) and wait for the thread to end."""
        self._stopping.set()
        if self._inline is not None:
            await self._inline.cancel()
        thread, loop, wake = self._thread, self._loop, self._wake
        if thread is None:
            return
        if loop is not None and wake is not None:
            with contextlib.suppress(RuntimeError):  # its loop has already closed
                loop.call_soon_threadsafe(wake.set)
        await asyncio.to_thread(thread.join)
