"""The worker: takes connections from the shared work channel and runs the app for each.

It only receives from the work channel while it has room (services/admission.py: fewer than
``concurrency`` connections at work, fewer than ``max_connections`` open), so work a busy worker
cannot serve stays queued for its siblings (and a full queue turns into 503s at the protocol
server); a connection whose app waits on its client costs memory, not a slot. Everything a
connection needs later (request body, client frames, disconnects, heartbeats) arrives on this
process's own channel, which gives WebSocket affinity for free.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from layer.base import BaseChannelLayer
from layer.messages import Message
from services import messages as msg
from services import wire
from services.admission import CONCURRENCY, MAX_CONNECTIONS, Admission
from services.held_starts import HeldStarts
from services.instance import ASGIApp, Instance
from services.lifespan import Lifespan
from services.messages import BadMessage
from services.metrics import Metrics
from services.peer import Peer

log = logging.getLogger("layerkit.worker")


class Worker(Peer[Instance]):
    """One worker process: runners that take work, on the peer core (services/peer.py) that
    routes follow-ups and heart-beats protocol servers; drain."""

    role = "worker"
    logger = log
    prefix = "worker"
    takes = msg.TO_WORKER
    beats = frozenset({msg.HEARTBEAT})

    def __init__(
        self,
        layer: BaseChannelLayer,
        app: ASGIApp,
        metrics: Metrics,
        *,
        concurrency: int = CONCURRENCY,
        max_connections: int = MAX_CONNECTIONS,
        drain_timeout: float = 20.0,
        heartbeat: float = 1.0,
        ack_delay: float = 0.05,
    ) -> None:
        super().__init__(layer, metrics, heartbeat, heartbeat)  # the protocol servers we serve
        self.app = app
        self.admission = Admission(metrics, self._wake, concurrency, max_connections)
        self.drain_timeout = drain_timeout
        self.ack_delay = ack_delay
        self.chunk = wire.chunk_size(layer)
        self.lifespan = Lifespan(app)
        self.draining = False
        # Taken and not finished, not yet known to their protocol server (by id): a finished
        # instance leaves at once, freed while its memory is still in cache.
        self._fresh: dict[str, Instance] = {}
        self._runners: set[asyncio.Task[None]] = set()
        self._receiving: set[asyncio.Task[None]] = set()  # runners waiting for work right now
        self._drained = asyncio.Event()  # set when draining and the last connection ended
        self._work = self._taker(wire.WORK_CHANNEL, msg.WORK)
        self._held: HeldStarts  # made by start(), on the loop that runs the instances

    async def start(self) -> None:
        await self._open_channel()
        self._held = HeldStarts(self._loop)
        await self.lifespan.startup()
        self._run(("announce", self._announcer()))
        self._spawn()
        log.info(
            "worker channel %s, concurrency %d, max connections %d",
            self.channel, self.admission.concurrency, self.admission.max_connections,
        )  # fmt: skip

    def ready(self) -> bool:
        return not self.draining and bool(self._runners)

    async def _probe(self) -> None:
        websockets = sum(1 for inst in self._conns.values() if inst.accepted and not inst.closed)
        busy = self.admission.busy
        self.metrics.inflight.labels(self.role, "busy").set(busy)
        self.metrics.inflight.labels(self.role, "parked").set(len(self._conns) - busy)
        self.metrics.websockets.labels(self.role).set(websockets)

    async def drain(self) -> None:
        """Stop taking work, close WebSockets with 1012, let HTTP finish within the grace period."""
        self.draining = True
        receiving = list(self._receiving)
        for task in receiving:  # cancel-safe: a message already taken goes back to the queue
            task.cancel()
        await asyncio.gather(*receiving, return_exceptions=True)
        log.info("draining %d connection(s) for up to %.0f s", len(self._conns), self.drain_timeout)
        for inst in list(self._conns.values()):
            if inst.kind == "websocket" and not inst.closed:
                inst.lose_peer(1012)
                if inst.accepted:
                    await inst.send({"type": "websocket.close", "code": 1012})
        if self._conns:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._drained.wait(), self.drain_timeout)
        if self._conns:
            log.warning("cancelling %d connection(s) still running", len(self._conns))
        for task in self._runners:
            task.cancel()  # idle runners too
        if self._runners:
            await asyncio.wait(self._runners, timeout=2)

    async def stop(self) -> None:
        self._stopping = True
        if not self.draining:
            await self.drain()
        await super().stop()
        await self.lifespan.shutdown()

    # -- loops -----------------------------------------------------------------------------

    def _spawn(self) -> None:
        task = asyncio.create_task(self._runner(), name="worker-runner")
        self.vital.watch(task, _may_return)  # a runner returns when there is no room: fine
        self._runners.add(task)
        task.add_done_callback(self._runners.discard)

    def _wake(self) -> None:
        """A work slot came free (an instance parked): one more runner waits for work, as one
        that finished would (a burst of WebSockets is taken by many runners at once)."""
        if not self.draining and self.admission.room(len(self._receiving)):
            self._spawn()

    async def _runner(self) -> None:
        """Take a connection from the work channel, serve it, repeat while there is room.

        Runners wait in ``receive`` only while the worker has room for one more connection each
        (services/admission.py), so unserved work stays queued for siblings; a runner that
        finds no room ends. A runner serves its connection to the end, so a parked one (an idle
        WebSocket, a slow body) keeps its task and another runner takes over the waiting. A fast
        request costs neither a task nor a hand-over between tasks, and a backend can wake
        several waiting runners at once.
        """
        loop = asyncio.get_running_loop()
        task = asyncio.current_task()
        assert task is not None
        while not self.draining and self.admission.room(len(self._receiving)):
            inst = await self._take(task, loop)
            if inst is None:
                continue
            if not self._receiving and self.admission.room(0):
                self._spawn()  # someone keeps taking work while this one serves
            started = time.perf_counter()
            try:
                await inst.run(self.app)
            except Exception:  # never let one connection's failure kill the runner silently
                log.exception("serving %s %s failed", inst.kind, inst.id)
            finally:
                self._finished(inst, started)
            del inst  # not held while this runner waits for the next one

    async def _take(
        self, task: asyncio.Task[None], loop: asyncio.AbstractEventLoop
    ) -> Instance | None:
        """The next connection from the work channel, or None for one to skip."""
        self._receiving.add(task)
        try:
            message = await self._work.take()
        finally:
            self._receiving.discard(task)
        if message is None:
            return None
        if message[msg.DEADLINE] < time.time():
            return None  # its protocol server has already answered 503
        inst = Instance(
            self.layer, self.channel, self.chunk, message, loop, self._held, self._batcher,
            self.admission,
        )  # fmt: skip
        if self.lifespan.state:
            inst.scope["state"] = dict(self.lifespan.state)
        self._conns[inst.id] = inst
        self._depends_on(inst.reply)
        self._fresh[inst.id] = inst
        self.admission.taken()
        return inst

    def _lost(self, channel: str, message: Message, why: str, refused: bool) -> None:
        """A batched message could not be delivered (its instance may have finished since)."""
        cid = message.get(msg.CONN, "")
        inst = self._conns.get(cid)
        if refused:  # e.g. headers too large for the layer: the client gets a 500 / 1011
            log.error("the layer %s; failing %s", why, cid)
            if inst is not None:
                inst.refused()
            if self._batcher is not None:
                self._batcher.post(channel, msg.app_error(cid))
        elif inst is not None:
            inst.lost(why)
        else:
            log.warning("dropped a %s message: channel %s %s", message[msg.TYPE], channel, why)

    def _finished(self, inst: Instance, started: float) -> None:
        del self._conns[inst.id]
        self._fresh.pop(inst.id, None)
        self.admission.finished(inst.uncount())
        if self.draining and not self._conns:
            self._drained.set()
        if inst.kind == "http":
            self._requests.record(inst.status, time.perf_counter() - started)
        else:
            self.metrics.count(self.role, inst.kind, inst.status)

    # -- what protocol servers send (services/peer.py routes it) ----------------------------

    def _heard(self, message: Message) -> None:
        self.peers.seen[message[msg.REPLY_CHANNEL]] = self._loop.time()

    def _unexpected(self, conn: Instance, kind: str) -> str:
        return f"{conn.kind} connection"

    def _deliver(self, conn: Instance, kind: str, message: Message) -> None:
        if kind == msg.DISCONNECT:
            conn.client_left()
        conn.put(message)

    def _spoiled(self, conn_id: str, bad: BadMessage) -> None:
        """A protocol server sent a malformed message for one of our connections: give it up."""
        inst = self._conns.get(conn_id)
        if inst is not None and not inst.gone:
            self._give_up(inst, 1011, f"its protocol server sent a malformed {bad.kind} ({bad})")

    def _give_up(self, inst: Instance, code: int, why: str) -> None:
        """Stop serving ``inst``'s client: the app hears it left (``code``), and the protocol
        server gets a best-effort 502 / 1011, so its client does not hang either."""
        log.warning("%s; disconnecting %s", why, inst.id)
        inst.gone = True
        inst.lose_peer(code)
        lost = msg.app_error(inst.id, 502)
        self._background.run(inst.id, self.layer.send_trusted(inst.reply, lost))

    async def _announcer(self) -> None:
        """Send ``k.pick`` for connections the app has not answered within ``ack_delay``.

        One periodic scan of the connections taken since, instead of a timer per request: fast
        requests never pay for it, and open WebSockets (known) are not scanned again.
        """
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(self.ack_delay)
            due = loop.time() - self.ack_delay
            fresh, self._fresh = self._fresh, {}
            for inst in fresh.values():
                if inst.known or inst.closed or inst.id not in self._conns:
                    continue  # (finished while an announcement below was sent)
                if inst.started <= due:
                    await inst.announce()
                else:
                    self._fresh[inst.id] = inst

    # -- liveness (services/peer.py checks every heartbeat) --------------------------------

    def _watched(self, conn: Instance, now: float) -> tuple[str, float] | None:
        return None if conn.gone else (conn.reply, conn.started)

    def _lose(self, conn: Instance, peer: str) -> None:
        # Silence may be one-way (its beats lost on a dead shard while its reply channel
        # still works): tell it, so its client gets 502/1011, not a hang.
        self._give_up(conn, 1006, f"protocol server {peer} went silent")

    def _heartbeat(self) -> Message:
        return msg.worker_heartbeat(self.channel)

    def _tick(self, ticks: int) -> None:
        if ticks % 2 == 0 and not self.draining:  # every other heartbeat: we take work
            hello = self.layer.group_send(wire.PROTOCOL_GROUP, msg.hello(self.channel))
            self._background.run("hello", hello)


def _may_return() -> bool:
    return True
