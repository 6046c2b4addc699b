"""The admin port's ASGI app: liveness, readiness and Prometheus metrics, apart from app routes."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST

from layer.base import BaseChannelLayer
from services.metrics import Metrics

log = logging.getLogger("layerkit.admin")

Check = Callable[[], bool]
Dead = Callable[[], list[str]]  # what has died of the loops a role cannot do without
Channels = Callable[[], list[str]]  # the channels a role receives on and sends to

# /readyz answers within this many seconds (the k8s probes' timeoutSeconds leave a second more;
# tests/k8s checks it): a shard that does not answer a PING by then counts as unreachable.
READY_TIMEOUT = 2.0
STATS_EVERY = 30.0  # seconds between two walks of the store for /metrics (see CachedStats)


class CachedStats:
    """The layer's ``stats()`` for ``/metrics``, walked at most every ``every`` seconds.

    ``stats()`` counts what the whole store holds (Redis: SCAN and LLEN on every shard, seconds
    with a million keys), so a scrape never waits for it: it gets this instance's counters as
    they are now and the storage counts of the last walk, and starts the next walk when due.
    """

    def __init__(self, layer: BaseChannelLayer, every: float = STATS_EVERY) -> None:
        self.layer = layer
        self.every = every
        self._storage: dict[str, int] = {}
        self._due = 0.0  # monotonic time of the next walk
        self._walk: asyncio.Task[None] | None = None

    def latest(self) -> dict[str, int]:
        if self._walk is None and time.monotonic() >= self._due:
            self._walk = asyncio.create_task(self._refresh())
        return {**self._storage, **self.layer.counters.__dict__}

    async def _refresh(self) -> None:
        try:
            stats = await asyncio.wait_for(self.layer.stats(), self.every)
        except Exception as exc:  # the layer down: keep the last counts, the probe says why
            log.debug("layer stats() failed: %s", exc)
        else:
            counters = self.layer.counters.__dict__
            self._storage = {key: value for key, value in stats.items() if key not in counters}
        finally:
            self._due = time.monotonic() + self.every
            self._walk = None

    async def close(self) -> None:
        if self._walk is not None:
            self._walk.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._walk


class AdminApp:
    """``/healthz`` (up, and no loop it depends on has died), ``/readyz`` (the shards of this
    process's own channels answer, and the role's checks pass), ``/metrics``."""

    def __init__(
        self,
        layer: BaseChannelLayer,
        metrics: Metrics,
        checks: dict[str, Check],
        channels: Channels,
        dead: Sequence[Dead] = (),
    ) -> None:
        self.layer = layer
        self.metrics = metrics
        self.checks = checks
        self.dead = dead
        self.channels = channels
        self.stats = CachedStats(layer)
        metrics.add_probe(self._layer_stats)

    async def _layer_stats(self) -> None:
        for key, value in self.stats.latest().items():
            self.metrics.layer.labels(key).set(value)

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        if scope["type"] != "http":
            return
        path = scope["path"]
        if path == "/healthz":
            dead = [what for role in self.dead for what in role()]
            if dead:
                body = "".join(f"dead: {what}\n" for what in dead).encode()
                await _reply(send, 503, body, b"text/plain")
            else:
                await _reply(send, 200, b"ok\n", b"text/plain")
        elif path == "/readyz":
            failing = await self._failing()
            body = json.dumps({"ready": not failing, "failing": failing}).encode()
            await _reply(send, 503 if failing else 200, body, b"application/json")
        elif path == "/metrics":
            await _reply(send, 200, await self.metrics.render(), CONTENT_TYPE_LATEST.encode())
        else:
            await _reply(send, 404, b"admin routes: /healthz /readyz /metrics\n", b"text/plain")

    async def _failing(self) -> list[str]:
        """Why this process cannot serve now (empty: it can). Only the storage of its own
        channels counts: one shard down of three must not take every pod out of its Service."""
        failing: list[str] = []
        try:
            await asyncio.wait_for(self.layer.check_reachable(self.channels()), READY_TIMEOUT)
        except TimeoutError:
            failing.append(f"layer: no answer within {READY_TIMEOUT:g} s")
        except Exception as exc:
            failing.append(f"layer: {exc}")
        failing.extend(name for name, check in self.checks.items() if not check())
        return failing

    async def close(self) -> None:
        await self.stats.close()


async def _reply(send: Any, status: int, body: bytes, content_type: bytes) -> None:
    headers = [(b"content-type", content_type), (b"cache-control", b"no-store")]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
