"""Runs one role (protocol, worker or combined) in one event loop: uvicorn servers + layer loops.

Signals are ours, not uvicorn's: SIGTERM/SIGINT drain the worker (stop taking work, finish HTTP,
close WebSockets with 1012) and shut the app server down gracefully, then the admin server stops.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import math
import signal
from collections.abc import Generator
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import uvicorn

from layer.base import BaseChannelLayer
from services import context
from services.admin import AdminApp, Check
from services.admission import CONCURRENCY, MAX_CONNECTIONS, raise_open_files
from services.instance import ASGIApp
from services.limits import Limits
from services.metrics import Metrics
from services.plain import BridgeHttpProtocol
from services.protocol_server import ProtocolServer
from services.worker import Worker

log = logging.getLogger("layerkit")


@dataclass(frozen=True)
class Settings:
    """Everything a role needs; the CLI fills it from flags and environment variables."""

    role: str
    host: str = "127.0.0.1"
    port: int = 8000
    admin_port: int = 8081
    concurrency: int = CONCURRENCY  # worker: connections at work (services/admission.py)
    max_connections: int = MAX_CONNECTIONS  # connections one process holds open
    drain_timeout: float = 20.0
    pickup_timeout: float = 5.0
    heartbeat: float = 1.0
    limits: Limits = field(default_factory=Limits)  # on the protocol server's clients


class _Server(uvicorn.Server):
    """uvicorn without its own signal handling (the runner owns SIGTERM/SIGINT)."""

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield


def _server(
    app: Any, host: str, port: int, grace: float, http: Any = "httptools", **options: Any
) -> _Server:
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        http=http,
        interface="asgi3",  # the protocol server's __call__ returns a coroutine, not async def
        lifespan="off",
        log_config=None,
        access_log=False,
        server_header=False,
        # X-Forwarded-* reach the app untouched; interpreting them is the app's policy (Django:
        # SECURE_PROXY_SSL_HEADER, USE_X_FORWARDED_HOST), and rewriting scope costs every request.
        proxy_headers=False,
        timeout_graceful_shutdown=math.ceil(grace),
        **options,
    )
    return _Server(config)


async def serve(settings: Settings, layer: BaseChannelLayer, app: ASGIApp | None) -> int:
    """Run the role until SIGTERM/SIGINT; returns the process exit code."""
    metrics = Metrics()
    context.set_layer(layer)
    raise_open_files(settings.max_connections)
    checks: dict[str, Check] = {}
    protocol: ProtocolServer | None = None
    worker: Worker | None = None
    if settings.role in ("protocol", "combined"):
        protocol = ProtocolServer(
            layer,
            metrics,
            pickup_timeout=settings.pickup_timeout,
            heartbeat=settings.heartbeat,
            max_connections=settings.max_connections,
        )
        checks["worker seen recently"] = protocol.ready
    if settings.role in ("worker", "combined"):
        assert app is not None
        worker = Worker(
            layer,
            app,
            metrics,
            concurrency=settings.concurrency,
            max_connections=settings.max_connections,
            drain_timeout=settings.drain_timeout,
            heartbeat=settings.heartbeat,
        )
        checks["taking work"] = worker.ready
    if protocol is not None:
        await protocol.start()
    if worker is not None:
        await worker.start()
    # Everything imported and built so far lives as long as the process: keep the collector
    # from re-scanning it (a large app, e.g. Django, makes full collections slow otherwise).
    gc.collect()
    gc.freeze()

    dead = [role.vital.failing for role in (protocol, worker) if role is not None]
    admin = _server(AdminApp(layer, metrics, checks, dead), settings.host, settings.admin_port, 1)
    servers = [admin]
    front: _Server | None = None
    if protocol is not None:
        limits = settings.limits
        front = _server(
            protocol,
            settings.host,
            settings.port,
            settings.drain_timeout,
            # one write per response, body-less requests without a task, limits on clients
            http=BridgeHttpProtocol.bound(limits, partial(metrics.count, protocol.role, "refused")),
            ws_max_size=limits.max_ws_message,
        )
        servers.append(front)
    tasks = [asyncio.create_task(server.serve()) for server in servers]

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    stopper = asyncio.create_task(stop.wait())
    await asyncio.wait([stopper, *tasks], return_when=asyncio.FIRST_COMPLETED)
    failed = not stop.is_set()
    if failed:
        log.error("a server stopped unexpectedly (is the port in use?); shutting down")
    else:
        log.info("shutting down: draining")

    if front is not None:
        front.should_exit = True
    if worker is not None:
        await worker.stop()
    if front is not None:
        await asyncio.gather(tasks[1], return_exceptions=True)
    if protocol is not None:
        await protocol.stop()
    admin.should_exit = True
    await asyncio.gather(*tasks, return_exceptions=True)
    stopper.cancel()
    await layer.close()
    return 1 if failed else 0
