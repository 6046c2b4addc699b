"""WebSockets at scale (issue 19): N members in one room of a Channels tutorial chat, all at once.

The app is tests/services/djchat (a textbook ``AsyncJsonWebsocketConsumer`` group chat) served
(a) by uvicorn + Channels directly, with our Redis layer and with ``channels_redis``, (b) by
``layerkit combined``, (c) by protocol server + worker over IPC, (d) over Redis, (e) by two
pods (each a protocol server + worker on its own IPC prefix) sharing three Redis shards through
the Local + Redis layer, the members split between them; every subject with its default
options. For each N: connections opened (the consumer's first message came) and refused,
server RSS per connection, and the time until every member has a broadcast a member sent (20
broadcasts: p50 and max), deliveries lost, server CPU.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import json
import os
import resource
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import websockets

from bench.core import Result, SuiteResult, Target
from bench.processes import Processes, cpu_seconds
from bench.subjects import Setup, combined, ipc_split, local_redis_split, redis_split, split
from harness.ports import free_port
from harness.redis_server import RedisServer

APP = "tests.services.djchat.asgi:application"
OURS, CHANNELS_REDIS, COMBINED, IPC, REDIS, PODS = (
    "(a) uvicorn + Channels, our Redis",
    "(a2) uvicorn + Channels, channels_redis",
    "(b) combined in-memory",
    "(c) protocol+worker IPC",
    "(d) protocol+worker Redis",
    "(e) two pods, local+Redis",
)
# Every subject serves the chat (not the demo) with the settings whose CHANNEL_LAYERS come from
# the subject's $LAYER_CONFIG: Django and the kit's services then share one layer.
SERVED = {"KIT_APP": APP, "DJANGO_SETTINGS_MODULE": "tests.services.djchat.settings"}
BROADCASTS = 20
SPEED = {COMBINED: 0.67, IPC: 1.0, REDIS: 1.0}  # broadcast p50 at most 1.5x / 1x (a)'s
PATIENCE = 30.0  # seconds a member may take to hear a broadcast before it counts as lost
# channels_redis's connections per pool (one pool per shard and event loop). Its default is
# redis-py's, 100 in redis-py 8.2 (redis/redis-py#4082; 2**31 before), and that pool raises
# when all are in use rather than waiting; each consumer's group_add in connect() takes one
# while the room joins at once. With the default, 99 of 1,000 (2,000, 5,000) opened, and
# every other handshake failed with ``redis.exceptions.MaxConnectionsError: Too many
# connections`` out of group_add. A user raises it through a host given as a dict of pool
# options (channels_redis's README, ``hosts``); redis-server's maxclients (10,000) bounds it.
CR_POOL = 10_000
# And its connections' read timeout: redis-py 8.2's default is 5 s, the same as the 5 s
# channels_redis's receive blocks in BZPOPMIN, so an idle receive can time out before the
# server's empty reply is read (``redis.exceptions.TimeoutError: Timeout reading from ...``
# out of the consumer's receive, which ends it). Longer than that block, as a user would set.
CR_READ_TIMEOUT = 15


def _uvicorn(config: str, **env: str) -> Setup:
    def start(procs: Processes, port: int) -> None:
        args = [sys.executable, "-m", "uvicorn", APP, "--port", str(port), "--loop", "uvloop"]
        procs.spawn([*args, "--log-level", "warning"], "uvicorn", LAYER_CONFIG=config, **env)

    return Setup(start, config, env)


@contextlib.contextmanager
def _direct(ours: bool) -> Iterator[Setup]:
    server = RedisServer().start()
    with tempfile.TemporaryDirectory() as scratch:
        try:
            assert server.process is not None
            if ours:
                setup = _uvicorn("config/redis.yaml", REDIS_URL=server.url)
            else:
                # A host as a dict of redis-py options, as channels_redis's README shows: its
                # defaults refuse the room and end idle receives (CR_POOL, CR_READ_TIMEOUT).
                config = Path(scratch) / "channels_redis.yaml"
                config.write_text(
                    "default:\n  BACKEND: channels_redis.core.RedisChannelLayer\n"
                    f"  CONFIG:\n    hosts: [{{address: {server.url!r}, "
                    f"max_connections: {CR_POOL}, socket_timeout: {CR_READ_TIMEOUT}}}]\n"
                )
                setup = _uvicorn(str(config))
            setup.servers.append(("redis", server.process.pid))
            yield setup
        finally:
            server.stop()


@contextlib.contextmanager
def _two_pods() -> Iterator[list[Setup]]:
    """Two pods on this machine: each a protocol server + worker on an IPC prefix of its own
    (so a host of its own to the layer), both on the same three shards and key prefix."""
    with local_redis_split() as one, ipc_split() as other:
        assert one.config is not None
        two = split(one.config, **{**one.env, **other.env})  # pod one's shards, own prefix
        yield [one, two]


Subject = Callable[[], contextlib.AbstractContextManager[Setup | list[Setup]]]  # a Setup per pod
SUBJECTS: dict[str, Subject] = {
    OURS: lambda: _direct(True),
    CHANNELS_REDIS: lambda: _direct(False),
    COMBINED: lambda: contextlib.nullcontext(Setup(combined)),
    IPC: ipc_split,
    REDIS: redis_split,
    PODS: _two_pods,
}


def _available(name: str) -> bool:
    if name == CHANNELS_REDIS:
        return importlib.util.find_spec("channels_redis") is not None
    if name in (IPC, PODS):
        return importlib.util.find_spec("layer.ipc") is not None
    return True


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


@dataclass
class Measured:
    opened: int
    refused: int
    kib_per_connection: float
    p50_ms: float
    max_ms: float
    lost: int
    cpu_s: float


async def _member(url: str) -> websockets.ClientConnection | None:
    """A member whose consumer has accepted and greeted it; None if refused."""
    try:
        ws = await websockets.connect(url, open_timeout=60, ping_interval=None, max_queue=None)
        greeting = json.loads(await asyncio.wait_for(ws.recv(), 60))
    except (OSError, TimeoutError, websockets.WebSocketException, ValueError):
        return None
    return ws if isinstance(greeting, dict) and "pid" in greeting else None


async def _room(ports: Sequence[int], n: int, pids: list[int]) -> Measured:
    """Member ``i`` connects to ``ports[i % len(ports)]`` (its pod), so the broadcasts, sent
    by one member after another, come from each pod in turn."""
    urls = [f"ws://127.0.0.1:{port}/chat/bench/" for port in ports]
    before = sum(_rss_kib(pid) for pid in pids)
    members = await asyncio.gather(*(_member(urls[i % len(urls)]) for i in range(n)))
    room = [ws for ws in members if ws is not None]
    await asyncio.sleep(2)  # let memory settle after the burst
    grown = sum(_rss_kib(pid) for pid in pids) - before
    cpu = sum(cpu_seconds(pid) for pid in pids)
    spreads: list[float] = []
    lost = 0
    for index in range(BROADCASTS if room else 0):
        text = f"broadcast {index}"
        sent = time.perf_counter()

        async def heard(
            ws: websockets.ClientConnection, text: str = text, sent: float = sent
        ) -> float | None:
            with contextlib.suppress(TimeoutError, websockets.WebSocketException):
                async with asyncio.timeout(PATIENCE):
                    while json.loads(await ws.recv()).get("text") != text:
                        pass
                    return time.perf_counter() - sent
            return None

        listening = [asyncio.ensure_future(heard(ws)) for ws in room]
        with contextlib.suppress(websockets.WebSocketException):  # closed: all of it is lost
            await room[index % len(room)].send(json.dumps({"text": text}))
        times = await asyncio.gather(*listening)
        lost += sum(1 for t in times if t is None)
        spreads.append(max((t for t in times if t is not None), default=PATIENCE))
    cpu = sum(cpu_seconds(pid) for pid in pids) - cpu
    await asyncio.gather(*(ws.close() for ws in room), return_exceptions=True)
    return Measured(
        len(room), n - len(room), grown / max(1, len(room)),
        statistics.median(spreads or [PATIENCE]) * 1000, max(spreads or [PATIENCE]) * 1000, lost,
        cpu,
    )  # fmt: skip


def measure(name: str, n: int) -> Measured:
    procs = Processes()
    with SUBJECTS[name]() as subject:
        pods = subject if isinstance(subject, list) else [subject]  # a Setup per pod
        ports = [free_port() for _ in pods]
        saved = {name: os.environ.get(name) for name in SERVED}
        os.environ.update(SERVED)
        try:
            for setup, port in zip(pods, ports, strict=True):
                setup.start(procs, port)
            for port in ports:
                procs.wait_ready(port, "/hello/")
            pids = [pid for _, pid in procs.pids()]  # the servers; redis-server is not counted
            return asyncio.run(_room(ports, n, pids))
        finally:
            procs.stop()
            for name, value in saved.items():
                if value is None:
                    del os.environ[name]
                else:
                    os.environ[name] = value


def run(quick: bool) -> SuiteResult:
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # the members' sockets live here
    sizes = (200,) if quick else (1_000, 2_000, 5_000)
    names = [name for name in SUBJECTS if _available(name)]
    results: list[Result] = []
    rows: list[str] = []
    for n in sizes:
        for name in names:
            m = measure(name, n)
            per_mib = 1024 / max(m.kib_per_connection, 1.0)
            results += [
                Result(f"opened, {n}", name, m.opened, "connections"),
                Result(f"connections per MiB, {n}", name, per_mib, "/MiB"),
                Result(f"broadcasts per s (1 / p50), {n}", name, 1000 / m.p50_ms, "/s"),
            ]
            rows.append(
                f"| {n:,} | {name} | {m.opened:,} | {m.refused:,} | {m.kib_per_connection:.1f} "
                f"| {m.p50_ms:,.0f} | {m.max_ms:,.0f} | {m.lost:,} | {m.cpu_s:.1f} |"
            )
    targets = [
        target
        for n in sizes
        for subject in (COMBINED, IPC, REDIS)
        if subject in names
        for target in (
            Target(f"opened, {n}", subject, OURS, 1.0),
            Target(f"connections per MiB, {n}", subject, OURS, 0.8),  # RSS <= 1.25x (a)'s
            Target(f"broadcasts per s (1 / p50), {n}", subject, OURS, SPEED[subject]),
        )
    ]
    notes = (
        f"N members connect at once to one room of tests/services/djchat (a Channels tutorial "
        f"chat); a member then sends {BROADCASTS} messages one after another and each "
        "broadcast's time is until the last member heard it (p50 and max over them); a member "
        f"that has not heard one within {PATIENCE:.0f} s counts as a lost delivery. RSS is the "
        "servers' growth (uvicorn, or protocol server + worker; not redis-server) per open "
        "connection, 2 s after the last handshake; CPU is theirs during the broadcasts. Every "
        "subject runs its defaults, but for two of (a2)'s redis-py connection options, which "
        "channels_redis takes from redis-py 8.2 unchanged: a pool of 100 connections that "
        "raises when all are in use (under it 99 members of each N opened, the rest failed "
        "in the consumer's group_add: redis.exceptions.MaxConnectionsError: Too many "
        "connections), and a 5 s read timeout, as long as channels_redis's own blocking pop "
        "(at 5,000 every broadcast was lost: consumers ended with "
        "redis.exceptions.TimeoutError: Timeout reading from 127.0.0.1:<port> out of their "
        "receive). (a2) gives its host as a dict, as its README allows, with "
        f"max_connections: {CR_POOL:,} and socket_timeout: {CR_READ_TIMEOUT}. "
        "Targets (issue 19): (b)-(d) open all N (as many as (a)), "
        "RSS per connection at most 1.25x (a)'s, broadcast p50 at most (a)'s for (c)/(d) and "
        "1.5x for (b). (e), issue 23: members alternate between the two pods' ports (so do "
        "the broadcasts' senders); a broadcast reaches the sender's pod over IPC and the "
        "other pod over Redis.\n\n"
        "| N | subject | opened | refused | KiB per connection | broadcast p50 ms | max ms "
        "| lost | server CPU s |\n|---|---|---|---|---|---|---|---|---|\n" + "\n".join(rows)
    )
    return SuiteResult("websockets", "WebSockets at scale: one chat room", results, targets, notes)
