"""The worker: takes connections from the shared work channel and runs the app for each.

Concurrency is bounded by only receiving from the work channel while a slot is free, so work a
busy worker cannot serve stays queued for its siblings (and a full queue turns into 503s at the
protocol server). Everything a connection needs later (request body, client frames, disconnects,
heartbeats) arrives on this process's own channel, which gives WebSocket affinity for free.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Coroutine
from typing import Any

from layer.base import BaseChannelLayer
from layer.messages import Message
from services import batching, wire
from services.background import OneInFlight
from services.instance import ASGIApp, HeldStarts, Instance
from services.lifespan import Lifespan
from services.metrics import Metrics

log = logging.getLogger("layerkit.worker")


class Worker:
    """One worker process's loops: take work, route follow-ups, heartbeat, drain."""

    role = "worker"

    def __init__(
        self,
        layer: BaseChannelLayer,
        app: ASGIApp,
        metrics: Metrics,
        *,
        concurrency: int = 256,
        drain_timeout: float = 20.0,
        heartbeat: float = 1.0,
        ack_delay: float = 0.05,
    ) -> None:
        self.layer = layer
        self.app = app
        self.metrics = metrics
        self.concurrency = concurrency
        self.drain_timeout = drain_timeout
        self.heartbeat = heartbeat
        self.dead_after = 3 * heartbeat
        self.ack_delay = ack_delay
        self.chunk = wire.chunk_size(layer)
        self.channel = ""
        self.lifespan = Lifespan(app)
        self.draining = False
        self._conns: dict[str, Instance] = {}
        self._runners: set[asyncio.Task[None]] = set()
        self._receiving: set[asyncio.Task[None]] = set()  # runners waiting for work right now
        self._drained = asyncio.Event()  # set when draining and the last connection ended
        self._seen: dict[str, float] = {}
        self._receive_failed = -math.inf  # loop time the last failed receive was logged
        self._loops: list[asyncio.Task[None]] = []
        self._background = OneInFlight(log)  # heartbeats and hellos
        self._requests = metrics.http(self.role)
        self._loop: asyncio.AbstractEventLoop  # set by start()
        self._held: HeldStarts  # made by start(), on the loop that runs the instances
        self._batcher = (
            batching.Batcher(layer, self._lost) if batching.worth_batching(layer) else None
        )
        metrics.add_probe(self._probe)

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._held = HeldStarts(self._loop)
        self.channel = await self.layer.new_channel("worker")
        await self.lifespan.startup()
        self._loops = [
            asyncio.create_task(self._dispatch(), name="worker-dispatch"),
            asyncio.create_task(self._heartbeats(), name="worker-heartbeat"),
            asyncio.create_task(self._announcer(), name="worker-announce"),
        ]
        self._spawn()
        log.info("worker channel %s, concurrency %d", self.channel, self.concurrency)

    def ready(self) -> bool:
        return not self.draining and bool(self._runners)

    async def _probe(self) -> None:
        websockets = sum(1 for inst in self._conns.values() if inst.accepted and not inst.closed)
        self.metrics.inflight.labels(self.role, "running").set(len(self._conns))
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
        if not self.draining:
            await self.drain()
        for task in self._loops:
            task.cancel()
        await asyncio.gather(*self._loops, self._background.cancel(), return_exceptions=True)
        if self._batcher is not None:
            await self._batcher.close()  # the last replies, before the layer closes
        await self.lifespan.shutdown()

    # -- loops -----------------------------------------------------------------------------

    def _spawn(self) -> None:
        task = asyncio.create_task(self._runner())
        self._runners.add(task)
        task.add_done_callback(self._runners.discard)

    async def _runner(self) -> None:
        """Take a connection from the work channel, serve it, repeat.

        Each idle runner waits in ``receive``, and there are at most ``concurrency`` runners, so
        the worker only takes work it has a free slot for; unserved work stays queued for
        siblings. A fast request costs neither a task nor a hand-over between tasks, and a
        backend can wake several idle runners at once.
        """
        loop = asyncio.get_running_loop()
        task = asyncio.current_task()
        assert task is not None
        while not self.draining:
            inst = await self._take(task, loop)
            if inst is None:
                continue
            if not self._receiving and len(self._runners) < self.concurrency:
                self._spawn()  # someone keeps taking work while this one serves
            started = time.perf_counter()
            try:
                await inst.run(self.app)
            except Exception:  # never let one connection's failure kill the runner silently
                log.exception("serving %s %s failed", inst.kind, inst.id)
            finally:
                self._finished(inst, started)

    async def _take(
        self, task: asyncio.Task[None], loop: asyncio.AbstractEventLoop
    ) -> Instance | None:
        """The next connection from the work channel, or None for one to skip."""
        self._receiving.add(task)
        try:
            message = await self.layer.receive(wire.WORK_CHANNEL)
        except asyncio.CancelledError:
            raise
        except Exception:
            if loop.time() - self._receive_failed > self.heartbeat:  # once, not per runner
                self._receive_failed = loop.time()
                log.exception("receiving work failed; retrying")
            await asyncio.sleep(self.heartbeat)
            return None
        finally:
            self._receiving.discard(task)
        if message.get("d", 0) < time.time():
            return None  # its protocol server has already answered 503
        try:
            inst = Instance(
                self.layer, self.channel, self.chunk, message, loop, self._held, self._batcher
            )
        except (KeyError, TypeError, ValueError):
            log.error("ignoring malformed work message of type %r", message.get("type"))
            return None
        if self.lifespan.state:
            inst.scope["state"] = dict(self.lifespan.state)
        self._conns[inst.id] = inst
        return inst

    def _lost(self, channel: str, message: Message, why: str, refused: bool) -> None:
        """A batched message could not be delivered (its instance may have finished since)."""
        cid = message.get("c", "")
        inst = self._conns.get(cid)
        if refused:  # e.g. headers too large for the layer: the client gets a 500 / 1011
            log.error("the layer %s; failing %s", why, cid)
            if inst is not None:
                inst.refused()
            if self._batcher is not None:
                self._batcher.post(channel, {"type": wire.APP_ERROR, "c": cid})
        elif inst is not None:
            inst.lost(why)
        else:
            log.warning("dropped a %s message: channel %s %s", message["type"], channel, why)

    def _finished(self, inst: Instance, started: float) -> None:
        del self._conns[inst.id]
        if self.draining and not self._conns:
            self._drained.set()
        if inst.kind == "http":
            self._requests.record(inst.status, time.perf_counter() - started)
        else:
            self.metrics.count(self.role, inst.kind, inst.status)

    def _dispatch(self) -> Coroutine[Any, Any, None]:
        """Route follow-up messages on this worker's channel to their instances."""
        return batching.dispatch(self.layer, self.channel, self._route, self.heartbeat)

    def _route(self, message: Message) -> None:
        kind = message.get("type")
        if kind == wire.HEARTBEAT:
            self._seen[message["r"]] = self._loop.time()
            return
        inst = self._conns.get(message.get("c", ""))
        if inst is None:
            return
        if kind == wire.ACK:
            if inst.window is not None:
                inst.window.acked(message["n"])
        else:
            if kind == wire.DISCONNECT:
                inst.client_left()
            inst.put(message)

    async def _announcer(self) -> None:
        """Send ``k.pick`` for connections the app has not answered within ``ack_delay``.

        One periodic scan instead of a timer per request: fast requests never pay for it.
        """
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(self.ack_delay)
            due = loop.time() - self.ack_delay
            for inst in [i for i in self._conns.values() if not i.known and i.started <= due]:
                if not inst.closed:
                    await inst.announce()

    async def _heartbeats(self) -> None:
        """Heartbeat protocol servers we serve, announce ourselves, notice dead protocol servers."""
        loop = asyncio.get_running_loop()
        beat = {"type": wire.HEARTBEAT, "w": self.channel}
        hello = {"type": wire.HELLO, "w": self.channel}
        ticks = 0
        while True:
            now = loop.time()
            peers: set[str] = set()
            for inst in list(self._conns.values()):
                if inst.gone:
                    continue
                if now - max(self._seen.get(inst.reply, 0.0), inst.started) > self.dead_after:
                    log.warning(
                        "protocol server %s went silent; disconnecting %s", inst.reply, inst.id
                    )
                    inst.gone = True
                    inst.lose_peer(1006)
                    # Silence may be one-way (its beats lost on a dead shard while its reply
                    # channel still works): tell it, so its client gets 502/1011, not a hang.
                    lost = {"type": wire.APP_ERROR, "c": inst.id, "code": 502}
                    self._background.run(inst.id, self.layer.send_trusted(inst.reply, lost))
                else:
                    peers.add(inst.reply)
            for peer in peers:
                self._background.run(peer, self.layer.send(peer, beat))
            if ticks % 2 == 0 and not self.draining:
                self._background.run("hello", self.layer.group_send(wire.PROTOCOL_GROUP, hello))
            wire.forget_silent(self._seen, now)
            ticks += 1
            await asyncio.sleep(self.heartbeat)
