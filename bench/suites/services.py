"""Services: the same small JSON endpoint and WebSocket echo served four ways, same run.

(a) uvicorn serving the demo app directly, (b) ``layerkit combined`` (in-memory layer),
(c) ``layerkit protocol`` + ``worker`` over IPC, (d) the same over Redis. HTTP is measured with
``wrk`` (requests/s, p50/p99 latency); WebSocket echo with pipelined ``websockets`` clients.
A backend joins when it exists in ``layer/`` (see ``bench/subjects.py``).
"""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import time
from dataclasses import dataclass, field

import websockets

from bench.core import Result, SuiteResult, Target
from bench.processes import ROOT, Processes, cpu_seconds, cpu_split, reaped_cpu
from bench.subjects import COMBINED, DIRECT, IPC, LOCAL, REDIS, SUBJECTS, Subject
from harness.ports import free_port
from layer.config import get_channel_layer

HTTP, WS = "GET /json", "WebSocket echo"
# Response sizes through the layer (issue 24): the path served, by workload.
SIZED = {"GET 4 KiB": "/bytes/4096", "GET 64 KiB": "/bytes/65536"}
WRK_CONNECTIONS = 32
WS_CLIENTS, WS_BURST = 8, 16


_LAT_RE = re.compile(r"^\s+(50|99)%\s+([\d.]+)(us|ms|s)\s*$", re.MULTILINE)
_SCALE = {"us": 0.001, "ms": 1.0, "s": 1000.0}


def wrk(port: int, seconds: int, path: str = "/json") -> tuple[float, float, float]:
    """Requests/s, p50 and p99 latency (ms) of ``GET path``."""
    out = subprocess.run(
        [
            "wrk",
            "-t2",
            f"-c{WRK_CONNECTIONS}",
            f"-d{seconds}s",
            "--latency",
            f"http://127.0.0.1:{port}{path}",
        ],
        capture_output=True,
        text=True,
        check=True,
        timeout=seconds + 30,
    ).stdout
    rate = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    latency = {q: float(v) * _SCALE[u] for q, v, u in _LAT_RE.findall(out)}
    if "Non-2xx" in out or "Socket errors" in out:
        print(f"   wrk reported errors:\n{out}", flush=True)
    return rate, latency["50"], latency["99"]


def layer_pair_cost(config: str, env: dict[str, str], count: int) -> float:
    """CPU microseconds of one ``send`` + ``receive`` of a request-sized message on the layer.

    Each HTTP request costs two such pairs (request and response); this is the floor the
    layer sets under (b)-(d), independent of the services.
    """
    saved = {key: os.environ.get(key) for key in env}
    os.environ.update(env)
    try:
        layer = get_channel_layer("default", ROOT / config)
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    message = {"type": "k.http", "c": "0123456789ab.1", "r": "proto.x!y", "s": b"s" * 300}

    async def pairs() -> float:
        for _ in range(count // 10):  # warm-up (connections, caches)
            await layer.send("bench.pair", message)
            await layer.receive("bench.pair")
        started = time.process_time()
        for _ in range(count):
            await layer.send("bench.pair", message)
            await layer.receive("bench.pair")
        cost = (time.process_time() - started) / count * 1e6
        await layer.close()
        return cost

    return asyncio.run(pairs())


async def ws_echo(port: int, seconds: float) -> float:
    """Messages/s echoed by ``/echo`` with pipelined bursts over several connections."""
    stop = time.perf_counter() + seconds
    counts = [0] * WS_CLIENTS

    async def client(index: int) -> None:
        async with websockets.connect(f"ws://127.0.0.1:{port}/echo") as ws:
            while time.perf_counter() < stop:
                for _ in range(WS_BURST):
                    await ws.send("ping 0123456789")
                for _ in range(WS_BURST):
                    await ws.recv()
                counts[index] += WS_BURST

    started = time.perf_counter()
    await asyncio.gather(*(client(i) for i in range(WS_CLIENTS)))
    return sum(counts) / (time.perf_counter() - started)


@dataclass
class Measured:
    """Best of the rounds for one subject (the least disturbed run on a shared machine)."""

    rate: float = 0.0
    p50: float = 0.0
    p99: float = 0.0
    echo: float = 0.0
    sized: dict[str, float] = field(default_factory=dict)
    pair: str = "-"
    cpu: str = "-"


def measure(subject: Subject, seconds: int, quick: bool, best: Measured) -> None:
    """One round: start the subject's processes, load them, keep the better numbers."""
    procs = Processes()
    port = free_port()
    with subject.setup() as setup:
        if setup.config is not None and best.pair == "-":
            best.pair = f"{layer_pair_cost(setup.config, setup.env, 500 if quick else 3000):.0f}"
        try:
            setup.start(procs, port)
            procs.wait_ready(port, "/json")
            wrk(port, 1)  # warm-up
            pids = [*procs.pids(), *setup.servers]
            before = {label: cpu_seconds(pid) for label, pid in pids} | {"wrk": reaped_cpu()}
            rate, p50, p99 = wrk(port, seconds)
            after = {label: cpu_seconds(pid) for label, pid in pids} | {"wrk": reaped_cpu()}
            echo = asyncio.run(ws_echo(port, seconds / 2))
            for workload, path in SIZED.items():
                sized = wrk(port, max(1, seconds // 2), path)[0]
                best.sized[workload] = max(best.sized.get(workload, 0.0), sized)
        finally:
            procs.stop()
    if rate > best.rate:
        best.rate, best.p50, best.p99 = rate, p50, p99
        best.cpu = cpu_split(before, after, rate * seconds)
    best.echo = max(best.echo, echo)


def run(quick: bool) -> SuiteResult:
    seconds, rounds = (2, 1) if quick else (8, 3)
    skipped = [s.name for s in SUBJECTS if not s.available()]
    subjects = [s for s in SUBJECTS if s.name not in skipped]
    best = {s.name: Measured() for s in subjects}
    for _ in range(rounds):  # interleaved, so a noisy minute hurts every subject alike
        for subject in subjects:
            measure(subject, seconds, quick, best[subject.name])
    results: list[Result] = []
    rows: list[str] = []
    for name, m in best.items():
        results.append(Result(HTTP, name, m.rate, "req/s"))
        results.append(Result(WS, name, m.echo, "msg/s"))
        results += [Result(workload, name, rate, "req/s") for workload, rate in m.sized.items()]
        rows.append(
            f"| {name} | {m.rate:,.0f} | {m.p50:.2f} | {m.p99:.2f} | {m.echo:,.0f} | {m.pair} "
            f"| {m.cpu} |"
        )
    targets = [
        Target(workload, subject, DIRECT, ratio)
        for workload in (HTTP,)
        for subject, ratio in ((COMBINED, 0.7), (IPC, 0.5), (REDIS, 0.5))
        if subject not in skipped
    ]
    if IPC not in skipped:  # issue 24: the IPC split at real response sizes
        targets += [Target(workload, IPC, DIRECT, 0.5) for workload in SIZED]
        if REDIS not in skipped:
            targets += [Target(workload, IPC, REDIS, 1.2) for workload in SIZED]
    if LOCAL not in skipped:  # issue 23: IPC's speed inside a pod, Redis' reach across pods
        targets += [Target(HTTP, LOCAL, IPC, 0.95), Target(HTTP, LOCAL, REDIS, 1.3)]
    notes = (
        f"wrk -t2 -c{WRK_CONNECTIONS}, {seconds} s per subject after a 1 s warm-up, best of "
        f"{rounds} interleaved round(s); "
        f"WebSocket echo: {WS_CLIENTS} connections, bursts of {WS_BURST} messages. "
        f"GET 4 KiB / 64 KiB: `/bytes/<n>` with the same wrk options for {max(1, seconds // 2)} s "
        "(best of the rounds). All subjects "
        "serve the same demo app on this machine in the same run; (c)/(d) are one protocol "
        "server + one worker (two processes for the two cores; the protocol server is the "
        "busier one, so more workers would only add contention); on IPC and Redis a worker "
        "sends its replies to one protocol server from one loop turn as one layer message and a"
        " protocol server its messages to a known worker (services/batching.py). The protocol "
        "server writes a response's head and body in one write (services/coalesce.py); (a) is "
        "stock uvicorn, which writes them separately, and the targets compare with (a); (a1) is"
        " uvicorn with the protocol server's one-write transport (no target), to show how much "
        "of the figures that transport explains. Each request is two layer send+receive pairs "
        "(request and response), so the layer send+receive column, measured in-process on the "
        "same layer, is a floor the backend puts under (b)-(d) whatever the services do. The "
        "last column splits the CPU time of the best GET run by process (from /proc, wrk "
        "included): (a) spends all of its on one process, while (c)/(d) add the layer hop on "
        "both sides and run three or four busy processes on two cores; docs/architecture.md "
        "(What a request costs) works out the ceiling that puts on the ratios.\n\n"
        "| subject | req/s | p50 ms | p99 ms | WS echo msg/s | layer send+receive, CPU µs "
        "| CPU µs per request, by process |\n"
        "|---|---|---|---|---|---|---|\n" + "\n".join(rows)
    )
    if skipped:
        notes += f"\n\nNot measured (backend not in this checkout): {', '.join(skipped)}."
    return SuiteResult(
        "services", "Services: protocol server + worker over the layer", results, targets, notes
    )
