"""The peer core both roles are built on: the protocol server and the worker are the two ends of
every connection, and each is a :class:`Peer` of the other.

A peer owns one process-specific channel and a table of its connections by id. One loop takes
everything arriving on the channel (services/batching.py: unbatched, checked) and routes it by
connection id: an ``k.ack`` opens the connection's send window, anything the connection may be
sent goes to its inbox, anything else is a malformed message, counted and dropped. A second
loop keeps the peers alive to each other: each check, every connection's peer that has been
silent too long (services/liveness.py) is given up, with its connections, and every other one
is heart-beaten (from a thread, services/heartbeats.py: a busy loop is not a dead one). What
is the role's own (what a heartbeat tells it, what a connection of it may be sent, what to do
with a lost peer) it says through the methods a role defines.
"""

from __future__ import annotations

import abc
import asyncio
import logging
from collections.abc import Coroutine
from typing import Any, ClassVar, Generic, Protocol, TypeVar

from layer.base import BaseChannelLayer
from layer.messages import Message
from services import batching, wire
from services import messages as msg
from services.background import OneInFlight, Vital
from services.heartbeats import Heartbeats
from services.liveness import Liveness
from services.messages import BadMessage
from services.metrics import Metrics


class Connection(Protocol):
    """What the core needs of a role's record of one connection."""

    id: str
    takes: frozenset[str]  # the message types it may be sent (others are refused)
    window: wire.Window | None  # its send window, opened by ``k.ack``

    def put(self, message: Message) -> None: ...


C = TypeVar("C", bound=Connection)


class Peer(abc.ABC, Generic[C]):
    """One role's own channel, connections, dispatch and liveness loops, and start/stop."""

    role: ClassVar[str]  # "protocol" or "worker": metrics' role label, loop names
    logger: ClassVar[logging.Logger]
    prefix: ClassVar[str]  # of our channel's name
    takes: ClassVar[msg.Channel]  # what arrives on our channel
    beats: ClassVar[frozenset[str]]  # the types that say a peer is alive (no connection)

    def __init__(
        self, layer: BaseChannelLayer, metrics: Metrics, heartbeat: float, check_every: float
    ) -> None:
        self.layer = layer
        self.metrics = metrics
        self.heartbeat = heartbeat
        self.channel = ""  # ours, made by start()
        self.peers = Liveness(check_every, 3 * heartbeat)
        self.vital = Vital(self.logger)  # the loops (and runners): if one dies, /healthz fails
        self._conns: dict[str, C] = {}
        self._loop: asyncio.AbstractEventLoop  # set by start()
        self._loops: list[asyncio.Task[None]] = []
        self._background = OneInFlight(self.logger)  # announcements
        self._beats = Heartbeats(layer, heartbeat, self.logger)  # from a thread: heartbeats.py
        self._stopping = False
        self._rejects = batching.Rejects(self.role, metrics, self.logger, self._spoiled)
        self._requests = metrics.http(self.role)  # HTTP statuses and latencies
        self._batcher = (
            batching.Batcher(layer, self._lost) if batching.worth_batching(layer) else None
        )
        metrics.add_probe(self._probe)

    # -- start / stop ----------------------------------------------------------------------

    async def _open_channel(self) -> None:
        """Make our channel (the first step of a role's ``start``)."""
        self._loop = asyncio.get_running_loop()
        self.channel = await self.layer.new_channel(self.prefix)

    def _run(self, *more: tuple[str, Coroutine[Any, Any, None]]) -> None:
        """Start the dispatch and liveness loops, and the role's ``more`` (name, loop)."""
        loops = (("dispatch", self._dispatch()), ("liveness", self._liveness()), *more)
        self._loops = [
            self.vital.watch(asyncio.create_task(loop, name=f"{self.role}-{name}"), self._stopped)
            for name, loop in loops
        ]

    def _stopped(self) -> bool:
        return self._stopping

    async def stop(self) -> None:
        """Stop the loops, then send what is still batched (before the layer closes)."""
        self._stopping = True
        for task in self._loops:
            task.cancel()
        await asyncio.gather(
            *self._loops, self._background.cancel(), self._beats.stop(), return_exceptions=True
        )
        if self._batcher is not None:
            await self._batcher.close()

    # -- dispatch --------------------------------------------------------------------------

    def _dispatch(self) -> Coroutine[Any, Any, None]:
        """Route everything arriving on our channel to its connection."""
        return batching.dispatch(self._taker(self.channel, self.takes), self._route)

    def _taker(self, channel: str, taking: msg.Channel) -> batching.Taker:
        """What takes checked messages off ``channel`` (what arrives there: ``taking``)."""
        checking = batching.checked(self.layer, taking)
        return batching.Taker(self.layer, channel, checking, self._rejects, self.heartbeat)

    def _route(self, message: Message) -> None:
        """Hand one (checked) message to its connection, or note that a peer is alive."""
        kind = message[msg.TYPE]
        if kind in self.beats:
            self._heard(message)
            return
        conn = self._conns.get(message[msg.CONN])
        if conn is None:
            return  # a late message for a connection that already ended
        if kind not in conn.takes:
            what = self._unexpected(conn, kind)
            if what is not None:
                wrong = BadMessage("wrong_connection", f"not for a {what}", kind, conn.id)
                self._rejects(wrong, message, self.channel)
                return
        if kind == msg.ACK:
            if conn.window is not None:
                conn.window.acked(message[msg.CONSUMED])
        else:
            self._deliver(conn, kind, message)

    @abc.abstractmethod
    def _heard(self, message: Message) -> None:
        """A message of ``beats`` arrived: note its sender alive."""

    @abc.abstractmethod
    def _unexpected(self, conn: C, kind: str) -> str | None:
        """What ``conn`` is, for the error, as it may not be sent a ``kind`` (not in its
        ``takes``); None if it may after all."""

    @abc.abstractmethod
    def _deliver(self, conn: C, kind: str, message: Message) -> None:
        """Hand ``message`` (any type ``conn`` takes but ``k.ack``) to ``conn``."""

    @abc.abstractmethod
    def _spoiled(self, conn_id: str, bad: BadMessage) -> None:
        """A peer sent a malformed message for our connection ``conn_id``: end it."""

    @abc.abstractmethod
    def _lost(self, channel: str, message: Message, why: str, refused: bool) -> None:
        """A batched message could not be delivered (batching.Lost)."""

    # -- liveness --------------------------------------------------------------------------

    async def _liveness(self) -> None:
        """Each check: give up connections whose peer went silent, have the other peers
        heart-beaten, and do the role's periodic work (:meth:`_tick`)."""
        loop = asyncio.get_running_loop()
        peers = self.peers
        ticks = 0
        while True:
            now = peers.tick(loop.time())
            alive: set[str] = set()
            for conn in list(self._conns.values()):
                watched = self._watched(conn, now)
                if watched is None:
                    continue
                peer, since = watched
                if wire.same_process(self.layer, peer):
                    continue
                if peers.dead(peer, since, now):
                    self._lose(conn, peer)
                else:
                    alive.add(peer)
            self._beats.update(alive, self._heartbeat())
            self._tick(ticks)
            ticks += 1
            await asyncio.sleep(peers.interval)

    def _depends_on(self, peer: str) -> None:
        """A connection of ours now depends on ``peer``: heart-beat it at once."""
        if self._beats.new(peer) and not wire.same_process(self.layer, peer):
            self._beats.add(peer, self._heartbeat())

    @abc.abstractmethod
    def _watched(self, conn: C, now: float) -> tuple[str, float] | None:
        """The peer ``conn`` depends on and the loop time it has since, or None if none."""

    @abc.abstractmethod
    def _lose(self, conn: C, peer: str) -> None:
        """``conn``'s peer went silent: end the connection."""

    @abc.abstractmethod
    def _heartbeat(self) -> Message:
        """What we send our peers to say we are alive."""

    @abc.abstractmethod
    def _tick(self, ticks: int) -> None:
        """The role's work at each check (``ticks`` checks before this one)."""

    @abc.abstractmethod
    async def _probe(self) -> None:
        """Set the role's gauges before ``/metrics`` answers."""
