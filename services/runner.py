"""Runs one role (protocol, worker or combined) in one event loop: uvicorn servers + layer loops.

Signals are ours, not uvicorn's: SIGTERM/SIGINT drain the worker (stop taking work, finish HTTP,
close WebSockets with 1012) and shut the app server down gracefully, then the admin server stops.
"""

from __future__ import annotations

import asyncio
import errno
import gc
import logging
import math
import signal
import socket
import ssl
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from layer.base import BaseChannelLayer
from layer.exceptions import AccessRefused, ConfigError
from services import context, wire
from services.admin import AdminApp, Check
from services.admission import CONCURRENCY, MAX_CONNECTIONS, raise_open_files
from services.instance import ASGIApp
from services.limits import Limits
from services.metrics import Metrics
from services.named_channels import NamedChannels
from services.plain import BridgeHttpProtocol
from services.protocol_server import ProtocolServer
from services.relay import PICKUP_TIMEOUT
from services.uvicorn_bridge import Config, QuietServer
from services.worker import Worker

log = logging.getLogger("layerkit")

PREFLIGHT_TIMEOUT = 10.0  # seconds the check at start waits for every shard to answer
FIRST_RETRY = 0.5  # seconds before a protocol server tries to join an unreachable layer again
MAX_RETRY = 5.0  # ... doubling up to this


@dataclass(frozen=True)
class Settings:
    """Everything a role needs; the CLI fills it from flags and environment variables."""

    role: str
    host: str = "127.0.0.1"
    port: int = 8000
    admin_port: int = 8081
    admin_host: str = "127.0.0.1"  # the admin port's own bind address (--admin-host)
    concurrency: int = CONCURRENCY  # worker: connections at work (services/admission.py)
    max_connections: int = MAX_CONNECTIONS  # connections one process holds open
    drain_timeout: float = 20.0
    pickup_timeout: float = PICKUP_TIMEOUT
    heartbeat: float = 1.0
    channels: tuple[str, ...] = ()  # background channels (services/named_channels.py)
    limits: Limits = field(default_factory=Limits)  # on the protocol server's clients
    root_path: str = ""
    ssl_certfile: str = ""  # with ssl_keyfile: TLS on the HTTP/WebSocket port
    ssl_keyfile: str = ""
    access_log: bool = False
    forwarded_allow_ips: str = ""  # proxies trusted for X-Forwarded-Proto/-For; "": none


@dataclass
class Ports:
    """The role's listening sockets, bound before the layer and the app are set up."""

    admin: socket.socket
    front: socket.socket | None  # protocol and combined only


def bind(settings: Settings) -> Ports:
    """Bind the role's ports; one that cannot be bound is a :class:`ConfigError` naming its
    option (uvicorn would only log ``[Errno 98]`` once everything else had started)."""
    if settings.role in ("protocol", "combined"):
        _check_tls(settings.ssl_certfile, settings.ssl_keyfile)
    admin = _bind("--admin-port", settings.admin_host, settings.admin_port)
    if settings.role not in ("protocol", "combined"):
        return Ports(admin, None)
    try:
        return Ports(admin, _bind("--port", settings.host, settings.port))
    except ConfigError:
        admin.close()
        raise


def _check_tls(certfile: str, keyfile: str) -> None:
    """Both files or neither, and loadable: uvicorn would fail only once serving began."""
    if bool(certfile) != bool(keyfile):
        raise ConfigError("--ssl-certfile and --ssl-keyfile go together: give both or neither")
    if certfile:
        try:
            ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(certfile, keyfile)
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(
                f"--ssl-certfile {certfile} / --ssl-keyfile {keyfile}: cannot load: {exc}"
            ) from exc


def _bind(option: str, host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn: restarts at once
    if host == "::":  # dual stack: IPv4 clients too, whatever net.ipv6.bindv6only says
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        why = "is in use" if exc.errno == errno.EADDRINUSE else "cannot be bound"
        raise ConfigError(f"{option} {port} {why} on {host} ({exc.strerror or exc})") from exc
    return sock


def _server(
    app: Any,
    host: str,
    port: int,
    grace: float,
    http: Any = "httptools",
    access_log: bool = False,
    forwarded_allow_ips: str = "",
    **options: Any,
) -> QuietServer:
    config = Config(
        app,
        host=host,
        port=port,
        http=http,
        interface="asgi3",  # the protocol server's __call__ returns a coroutine, not async def
        lifespan="off",
        log_config=None,
        access_log=access_log,
        server_header=False,
        # Unless proxies are named, X-Forwarded-* reach the app untouched: interpreting them is
        # then the app's policy (Django: SECURE_PROXY_SSL_HEADER), and the body-less fast path
        # stays (uvicorn's middleware wraps the app, so every request takes the general path).
        proxy_headers=bool(forwarded_allow_ips),
        forwarded_allow_ips=forwarded_allow_ips or None,
        timeout_graceful_shutdown=math.ceil(grace),
        **options,
    )
    return QuietServer(config)


async def serve(
    settings: Settings, layer: BaseChannelLayer, app: ASGIApp | None, ports: Ports
) -> int:
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

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    stopper = asyncio.create_task(stop.wait())
    # The admin port first: /healthz answers (and /readyz says why not) while the layer is
    # still out of reach, so an orchestrator waits instead of restarting the process.
    dead = [role.vital.failing for role in (protocol, worker) if role is not None]
    admin_app = AdminApp(layer, metrics, checks, lambda: _channels(protocol, worker), dead)
    admin = _server(
        admin_app,
        settings.admin_host,
        settings.admin_port,
        1,
        # uvicorn's access logger is one for the process, and its Config turns it off globally
        access_log=settings.access_log,
    )
    tasks = [asyncio.create_task(admin.serve(sockets=[ports.admin]))]
    code = await _start(layer, protocol, worker, [stopper, tasks[0]])
    if code is not None:
        if ports.front is not None:
            ports.front.close()
        return await _abandon(code, layer, admin, admin_app, tasks, stopper)
    named = None
    if app is not None and settings.channels:
        named = NamedChannels(layer, app, settings.channels, retry=settings.heartbeat)
        named.start()
    # Everything imported and built so far lives as long as the process: keep the collector
    # from re-scanning it (a large app, e.g. Django, makes full collections slow otherwise).
    gc.collect()
    gc.freeze()

    front: QuietServer | None = None
    if protocol is not None:
        assert ports.front is not None
        limits = settings.limits
        front = _server(
            protocol,
            settings.host,
            settings.port,
            settings.drain_timeout,
            # one write per response, body-less requests without a task, limits on clients
            http=BridgeHttpProtocol.bound(limits, partial(metrics.count, protocol.role, "refused")),
            ws_max_size=limits.max_ws_message,
            root_path=settings.root_path,
            ssl_certfile=settings.ssl_certfile or None,
            ssl_keyfile=settings.ssl_keyfile or None,
            access_log=settings.access_log,
            forwarded_allow_ips=settings.forwarded_allow_ips,
        )
        tasks.append(asyncio.create_task(front.serve(sockets=[ports.front])))
    await asyncio.wait([stopper, *tasks], return_when=asyncio.FIRST_COMPLETED)
    failed = not stop.is_set()
    if failed:
        log.error("a server stopped unexpectedly; shutting down")
    else:
        log.info("shutting down: draining")

    if front is not None:
        front.should_exit = True
    stopping = [worker.stop()] if worker is not None else []
    await asyncio.gather(*stopping, *([named.stop(settings.drain_timeout)] if named else []))
    if front is not None:
        await asyncio.gather(tasks[1], return_exceptions=True)
    if protocol is not None:
        await protocol.stop()
    admin.should_exit = True
    await asyncio.gather(*tasks, return_exceptions=True)
    stopper.cancel()
    await admin_app.close()
    await layer.close()
    return 1 if failed else 0


def _channels(protocol: ProtocolServer | None, worker: Worker | None) -> list[str]:
    """The channels this process receives on and sends every request through: the storage
    that holds them is what readiness asks about."""
    own = [protocol.channel if protocol else "", worker.channel if worker else ""]
    return [wire.WORK_CHANNEL, *(channel for channel in own if channel)]


async def reachable(layer: BaseChannelLayer) -> str:
    """Ask all of the layer's storage once: "" when it answered, else why not. A refusal (a
    wrong password) raises :class:`AccessRefused`: it is a configuration error, exit code 2."""
    try:
        await asyncio.wait_for(layer.check_reachable(), PREFLIGHT_TIMEOUT)
    except AccessRefused:
        raise
    except (ConnectionError, TimeoutError) as exc:
        return str(exc) or f"no answer within {PREFLIGHT_TIMEOUT:g} s"
    return ""


async def _start(
    layer: BaseChannelLayer,
    protocol: ProtocolServer | None,
    worker: Worker | None,
    waits: list[asyncio.Task[Any]],
) -> int | None:
    """Start the roles: None once started, else the exit code (2: the layer refused us, a
    configuration error; 1: the admin server failed; 0: stopped first).

    Unreachable storage is no reason to exit (in Kubernetes the shards' DNS names exist only
    once their pods are ready): a worker's loops retry by themselves, and a protocol server,
    which must join its group first, retries with backoff, one log line per attempt.
    """
    try:
        why = await reachable(layer)
    except AccessRefused as exc:
        log.error("%s", exc)
        return 2
    if why:
        log.warning("the channel layer is not reachable yet: %s", why)
    delay = FIRST_RETRY
    while protocol is not None:
        try:
            await protocol.start()
            break
        except AccessRefused as exc:
            log.error("%s", exc)
            return 2
        except ConnectionError as exc:
            log.warning("cannot join the channel layer (retrying in %.1f s): %s", delay, exc)
        done, _ = await asyncio.wait(waits, timeout=delay, return_when=asyncio.FIRST_COMPLETED)
        if done:
            return 0 if waits[0] in done else 1
        delay = min(delay * 2, MAX_RETRY)
    if worker is not None:
        await worker.start()
    return None


async def _abandon(
    code: int,
    layer: BaseChannelLayer,
    admin: QuietServer,
    admin_app: AdminApp,
    tasks: list[asyncio.Task[None]],
    stopper: asyncio.Task[Any],
) -> int:
    """Stop what :func:`_start` left running and return ``code``."""
    if code == 1:
        log.error("the admin server stopped unexpectedly")
    admin.should_exit = True
    await asyncio.gather(*tasks, return_exceptions=True)
    stopper.cancel()
    await admin_app.close()
    await layer.close()
    return code
