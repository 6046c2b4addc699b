"""IPC vs our Redis layer by message size, producer and consumer in different processes.

Payloads of 16 B, 1 KiB, 4 KiB, 64 KiB and 1 MiB (``{"type": ..., "body": <bytes>}``), streamed
(one producer, one consumer) and roundtrip (ping-pong through an echo process), with the
machine's ``memcpy`` ceiling beside them: one copy of the payload's bytes into a preallocated
buffer, in a loop, in one process. A message crossing the IPC layer is copied at least four
times (msgpack packing, into the segment, out of it, unpacking), so a quarter of the ceiling is
what a perfect implementation of this design could reach. Targets (issue 24): IPC >= 3x our
Redis at every size, and >= 30,000 msg/s streamed at 64 KiB.
"""

from __future__ import annotations

import time
import uuid

from bench.core import Result, SuiteResult, Target
from bench.suites.ipc import OURS, REDIS, command, pair, redis_url

MEMCPY = "memcpy (one copy)"
SIZES = {"16 B": 16, "1 KiB": 1 << 10, "4 KiB": 4 << 10, "64 KiB": 64 << 10, "1 MiB": 1 << 20}
BYTES_PER_RUN = 256 << 20  # each run moves about this much (at least COUNT_MIN messages)
COUNT_MIN, COUNT_MAX = 200, 40_000


def count_for(size: int, quick: bool) -> int:
    count = max(COUNT_MIN, min(COUNT_MAX, BYTES_PER_RUN // size))
    return max(COUNT_MIN // 4, count // 10) if quick else count


def memcpy_rate(size: int, count: int) -> float:
    src, dst = b"x" * size, bytearray(size)
    started = time.perf_counter()
    for _ in range(count):
        dst[:] = src
    return count / (time.perf_counter() - started)


def measure(subject: str, workload: str, size: int, count: int, url: str = "") -> float:
    prefix = url or f"bench{uuid.uuid4().hex[:8]}"
    if workload == "roundtrip":
        roles = [("echo", count, 0), ("ping", count, 0)]
    else:
        roles = [("produce", count, 0), ("consume", count, 0)]
    return pair(command(subject, None), roles, prefix, str(size))["rate"]


def run(quick: bool) -> SuiteResult:
    repeats = 1 if quick else 3
    results: list[Result] = []
    targets: list[Target] = []
    with redis_url() as url:
        for label, size in SIZES.items():
            count = count_for(size, quick)
            for kind in ("streamed", "roundtrip"):
                workload = f"{kind}, {label}"
                runs = [(OURS, "")] + ([(REDIS, url)] if url else [])
                best = dict.fromkeys([subject for subject, _ in runs], 0.0)
                n = count if kind == "streamed" else max(COUNT_MIN // 4, count // 4)
                for _ in range(repeats):  # interleaved: a burst of load hits both alike
                    for subject, subject_url in runs:
                        rate = measure(subject, kind, size, n, subject_url)
                        best[subject] = max(best[subject], rate)
                unit = "msg/s" if kind == "streamed" else "roundtrips/s"
                results += [Result(workload, s, rate, unit) for s, rate in best.items()]
                results.append(Result(workload, MEMCPY, memcpy_rate(size, count), unit))
                if url:
                    targets.append(Target(workload, OURS, REDIS, 3.0))
    return SuiteResult(
        name="sizes",
        title="IPC vs Redis by message size (two processes)",
        results=results,
        targets=targets,
        notes=(
            f"Payload bytes in a `body` field; best of {repeats} runs per subject, the "
            "subjects' runs interleaved. `layer Redis`: our Redis layer through the same "
            'driver against a throwaway `redis-server --save "" --appendonly no`. '
            f"`{MEMCPY}`: one copy of the payload into a preallocated buffer, in a loop, in "
            "one process: the machine's ceiling (a message crosses the IPC layer with at "
            "least four copies). The 64 KiB streamed target is 30,000 msg/s. Both subjects' "
            "processes start with the glibc malloc settings the kit's services use "
            "(`services/memory.py`): without them a receiver of 1 MiB messages faults every "
            "one's pages in afresh (docs/ipc.md, Message storage)."
        ),
        lines=True,
    )
