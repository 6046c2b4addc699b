"""Two simulated hosts (two IPC prefixes) sharing three real Redis shards, two OS processes on
each: every message arrives exactly once and in its sender's order, whichever path it took
(IPC to a peer on the same host, Redis to the other host, a group send reaching both hosts);
each host's ``work`` channel is its own and hands every item to exactly one of its processes."""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from harness.redis_server import RedisServer
from layer.ipc.segment import unlink
from tests.layer.ipc.fixture import shm_objects
from tests.layer.local_worker import DIRECT, GROUP_EVERY, WORK
from tests.layer.redis_fixtures import shard_hosts

ROOT = Path(__file__).resolve().parents[2]
HOSTS, PER_HOST = 2, 2


@pytest.fixture
def prefixes() -> Iterator[list[str]]:
    made = [f"t{uuid.uuid4().hex[:12]}" for _ in range(HOSTS)]
    yield made
    for prefix in made:
        unlink(prefix)
        assert not shm_objects(prefix)


@pytest.mark.timeout(300)
def test_two_hosts_exactly_once_in_order(
    prefixes: list[str], redis_shards: list[RedisServer]
) -> None:
    redis = {"hosts": shard_hosts(redis_shards), "prefix": f"t{uuid.uuid4().hex[:10]}"}
    procs: list[tuple[int, subprocess.Popen[str]]] = []
    try:
        for host, prefix in enumerate(prefixes):
            config = {"ipc": {"prefix": prefix, "size": "32MB"}, "redis": redis, "capacity": 5000}
            for proc in range(PER_HOST):
                procs.append((host, _start(config, host, proc)))
        names = [json.loads(_line(p))["ready"] for _, p in procs]
        for _, p in procs:
            assert p.stdin is not None
            p.stdin.write(json.dumps(names) + "\n")
            p.stdin.flush()
        results = [json.loads(_line(p)) for _, p in procs]
        for _, p in procs:
            assert p.wait(60) == 0
    finally:
        for _, p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()

    groups = DIRECT // GROUP_EVERY
    for result in results:
        got = result["got"]
        assert set(got) == set(names), "a peer's messages never arrived"
        for sender, numbers in got.items():
            backwards = [(a, b) for a, b in itertools.pairwise(numbers) if b < a]
            assert not backwards, f"{sender}'s messages out of order at {result['me']}"
            assert len(set(numbers)) == len(numbers), f"{sender}'s message delivered twice"
            own = sender == result["me"]
            assert len(numbers) == groups if own else DIRECT + groups
    for host in range(HOSTS):
        taken = [
            tuple(item) for (h, _), result in zip(procs, results, strict=True) if h == host
            for item in result["work"]
        ]  # fmt: skip
        counts = Counter(taken)
        assert set(counts) == {(host, p, n) for p in range(PER_HOST) for n in range(WORK)}
        assert max(counts.values()) == 1, "a work item was taken twice"


def _start(config: dict, host: int, proc: int) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tests.layer.local_worker",
            json.dumps(config),
            str(host),
            str(proc),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )


def _line(proc: subprocess.Popen[str]) -> str:
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert line, f"worker exited with {proc.wait()} before saying anything"
    return line
