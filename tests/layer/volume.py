"""Cross-process runs at volume for any cross-process backend, driven by the ``v-*`` roles of
``tests.layer.ipc.volume_roles``: the four producers x four consumers run with most messages
expiring in the queue, and 1,000+ groups with 1,000+ members in one. Each returns what the
backend's own test then checks of the storage left behind (``ipc/test_volume.py``,
``redis/test_volume.py``).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any

from layer.base import BaseChannelLayer
from tests.layer.ipc.fixture import Worker
from tests.layer.ipc.volume_roles import members_of, sending

PRODUCERS, CONSUMERS, PER_PRODUCER, GROUP_EVERY = 4, 4, 25_000, 20
EXPIRY = 0.5  # seconds; consumers pause PAUSE of every PERIOD seconds, all at once
PERIOD, PAUSE = 1.5, 1.0
MEMBER_PROCESSES, MEMBERS_EACH = 4, 300  # 1,200 members of vb.big, 1,200 vb.solo groups
GROUP_SENDERS, GROUP_SENDS = 3, 100
CHURNERS, CHURN_OPS = 2, 4000


def in_order(pairs: list[Any], what: str) -> None:
    """Each producer's numbers in ``pairs`` (``[p, i]``) increase."""
    last: dict[int, int] = {}
    for p, i in pairs:
        assert i > last.get(p, -1), f"{what}: producer {p}'s {i} came after {last[p]}"
        last[p] = i


async def drain(layer: BaseChannelLayer, channel: str) -> list[dict]:
    """Whatever is left on ``channel`` (expired ones are dropped and counted by ``layer``)."""
    got: list[dict] = []
    while True:
        try:
            got.append(await asyncio.wait_for(layer.receive(channel), 1.0))
        except TimeoutError:
            return got


@dataclass
class ExpiryRun:
    sent: int  # messages (group deliveries counted per member)
    received: int
    expired: int
    seconds: float


async def expiring(
    layer: BaseChannelLayer, prefix: str, workers: list[Worker], options: dict[str, Any]
) -> ExpiryRun:
    """Four producers x four consumers (a shared channel, and a group of the consumers) with an
    expiry of 0.5 s and consumers that all pause 0.8 s of every 1.5 s: thousands of messages
    expire in the queue. Nothing received twice, each producer's order kept, and every message
    either received or counted expired by some process (``counters.expired``), none lost for
    room."""
    started = time.monotonic()
    opts = json.dumps({**options, "expiry": EXPIRY})
    consumers = [Worker("v-consume", prefix, opts, c, PERIOD, PAUSE) for c in range(CONSUMERS)]
    workers.extend(consumers)
    for consumer in consumers:
        await consumer.expect("ready")
    # Start the producers ~0.3 s (their start-up) before the consumers' next pause: they send
    # for ~3 s, and a fast run must still overlap pauses from its first messages on.
    await asyncio.sleep((PERIOD - 0.3 - time.time() % PERIOD) % PERIOD)
    producers = [
        Worker("v-produce", prefix, opts, p, PER_PRODUCER, GROUP_EVERY) for p in range(PRODUCERS)
    ]
    workers.extend(producers)
    made = [await producer.result(within=120) for producer in producers]
    refused = sum([await sending(layer, "v.work", {"type": "stop"}) for _ in range(CONSUMERS)])
    await layer.group_send("v.all", {"type": "stop"})
    assert layer.counters.dropped_full == refused, "the test's layer needs capacity=10_000"
    seen = [await consumer.result(within=120) for consumer in consumers]
    left = [m for m in await drain(layer, "v.work") if m["type"] not in ("stop", "fin")]

    work = [tuple(pair) for r in seen for pair in r["work"]] + [(m["p"], m["i"]) for m in left]
    twice = [pair for pair, n in Counter(work).items() if n > 1]
    assert not twice, f"{len(twice)} messages received twice, e.g. {twice[:3]}"
    for c, r in enumerate(seen):
        in_order(r["work"], f"consumer {c}'s work")
        in_order(r["group"], f"consumer {c}'s group messages")
        assert len(set(map(tuple, r["group"]))) == len(r["group"]), f"consumer {c}: a duplicate"
    assert sum(r["fins"] for r in seen) == PRODUCERS * (1 + CONSUMERS)  # they never expire
    assert [r["lost_full"] for r in made + seen] == [0] * (PRODUCERS + CONSUMERS)
    sent = sum(r["sent"] + r["group_sends"] * CONSUMERS for r in made)
    received = len(work) + sum(len(r["group"]) for r in seen)
    expired = sum(r["expired"] for r in made + seen) + layer.counters.expired
    assert received + expired == sent, (
        f"sent {sent}, received {received}, counted expired {expired}: "
        f"{sent - received - expired} unaccounted for"
    )
    assert expired > sent // 20, f"only {expired} of {sent} expired: the run tests too little"
    seconds = time.monotonic() - started
    print(f"{sent} sent, {received} received, {expired} expired ({expired / sent:.0%}) "
          f"in {seconds:.1f}s")  # fmt: skip
    return ExpiryRun(sent, received, expired, seconds)


@dataclass
class GroupsRun:
    """What the storage must hold afterwards: each group with members, and its members."""

    groups: dict[str, list[str]]
    seconds: float

    @property
    def memberships(self) -> int:
        return sum(map(len, self.groups.values()))


async def many_groups(
    layer: BaseChannelLayer, prefix: str, workers: list[Worker], options: dict[str, Any]
) -> GroupsRun:
    """1,200 channels in four processes, all members of ``vb.big`` and each of its own group;
    three processes group_send to ``vb.big`` (and to each of the 1,200 small groups) while two
    churn 1,000 groups of their own (add, discard, send, checked against a model) and add and
    discard their channels to ``vb.big`` meanwhile. Every member gets each ``vb.big`` message
    once, in each sender's order, and its small group's messages."""
    started = time.monotonic()
    opts = json.dumps(options)
    holders = [Worker("v-members", prefix, opts, c, MEMBERS_EACH) for c in range(MEMBER_PROCESSES)]
    workers.extend(holders)
    for holder in holders:
        await holder.expect("ready")
    spec = ",".join(f"{c}:{MEMBERS_EACH}" for c in range(MEMBER_PROCESSES))
    senders = [Worker("v-gsend", prefix, opts, p, GROUP_SENDS, spec) for p in range(GROUP_SENDERS)]
    churners = [Worker("v-churn", prefix, opts, k, CHURN_OPS) for k in range(CHURNERS)]
    workers.extend(senders + churners)
    sent = [await w.result(within=120) for w in senders]
    churned = [await w.result(within=120) for w in churners]
    await layer.group_send("vb.big", {"type": "end"})
    assert layer.counters.dropped_full == 0, "the test's layer needs capacity=10_000"
    got = [await w.result(within=120) for w in holders]

    assert [r["lost_full"] for r in sent + churned + got] == [0] * len(sent + churned + got)
    for r in churned:
        assert r["problems"] == []
    every = sorted((p, i) for p in range(GROUP_SENDERS) for i in range(GROUP_SENDS))
    for r in got:
        for channel, pairs in r["big"].items():
            assert sorted(map(tuple, pairs)) == every, f"{channel}: lost or duplicated"
            in_order(pairs, channel)
        for channel, producers in r["solo"].items():
            assert sorted(producers) == list(range(GROUP_SENDERS)), channel
    members = [m for c in range(MEMBER_PROCESSES) for m in members_of(c, MEMBERS_EACH)]
    groups = {"vb.big": sorted(members), **{f"vb.solo.{m}": [m] for m in members}}
    for r in churned:
        groups.update(r["groups"])
    seconds = time.monotonic() - started
    run = GroupsRun(groups, seconds)
    print(f"{len(groups)} groups, {run.memberships} memberships left, in {seconds:.1f}s")
    return run
