"""The admin port's ASGI app: liveness, readiness and Prometheus metrics, apart from app routes."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Sequence
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST

from layer.base import BaseChannelLayer
from services.metrics import Metrics

Check = Callable[[], bool]
Dead = Callable[[], list[str]]  # what has died of the loops a role cannot do without


class AdminApp:
    """``/healthz`` (up, and no loop it depends on has died), ``/readyz`` (layer reachable +
    role checks), ``/metrics``."""

    def __init__(
        self,
        layer: BaseChannelLayer,
        metrics: Metrics,
        checks: dict[str, Check],
        dead: Sequence[Dead] = (),
    ) -> None:
        self.layer = layer
        self.metrics = metrics
        self.checks = checks
        self.dead = dead
        metrics.add_probe(self._layer_stats)

    async def _layer_stats(self) -> None:
        try:
            stats = await asyncio.wait_for(self.layer.stats(), 2)
        except Exception:
            return
        for key, value in stats.items():
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
        failing: list[str] = []
        try:
            await asyncio.wait_for(self.layer.stats(), 2)
        except Exception as exc:
            failing.append(f"layer: {exc!r}")
        failing.extend(name for name, check in self.checks.items() if not check())
        return failing


async def _reply(send: Any, status: int, body: bytes, content_type: bytes) -> None:
    headers = [(b"content-type", content_type), (b"cache-control", b"no-store")]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
