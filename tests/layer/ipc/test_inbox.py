"""Process-specific channels through one inbox queue per receiving instance (docs/ipc.md "Group
sends"): direct and group sends from two other OS processes against a reference model, volume,
expiry, a 1,000-member group, malformed entries, and senders killed mid group send."""

from __future__ import annotations

import asyncio
import json
import logging
import math
import random
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from layer.ipc import IPCChannelLayer
from layer.ipc.check import verify
from layer.ipc.segment import unlink
from layer.ipc.table import make_key
from tests.layer import copies
from tests.layer.ipc.fixture import Worker, shm_objects
from tests.layer.receiving import assert_empty, receive_soon

Factory = Callable[..., IPCChannelLayer]
CAPACITY = 6  # the inbox's, in the model test: small, so sends and group sends meet it
SLACK = 64  # a sender's credit may overshoot a capacity other senders filled (outbox.py)
CHANNELS, GROUPS = 5, 2


async def ask(worker: Worker, command: dict[str, Any]) -> dict[str, Any]:
    worker.tell(json.dumps(command))
    reply: dict[str, Any] = json.loads(await worker.line())
    return reply


@pytest.fixture(scope="module")
def senders() -> Iterator[tuple[str, list[Worker]]]:
    """One segment and two sender processes for every example of the model test."""
    prefix = f"t{uuid.uuid4().hex[:12]}"
    started = [Worker("commands", prefix, me, CAPACITY) for me in range(2)]
    yield prefix, started
    for worker in started:
        worker.kill()
    unlink(prefix)
    assert not shm_objects(prefix)


Step = tuple[str, int, int, int]  # ("send" | "burst" | "group" | "receive", sender, target, size)
steps = st.lists(
    st.tuples(
        st.sampled_from(["send", "burst", "group", "receive", "receive"]),
        st.integers(0, 1),
        st.integers(0, CHANNELS - 1),
        st.sampled_from([0, 0, 400, 5000]),
    ),
    min_size=1,
    max_size=60,
)


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(steps=steps, memberships=st.lists(st.sets(st.integers(0, CHANNELS - 1), min_size=1),
                                         min_size=GROUPS, max_size=GROUPS))  # fmt: skip
def test_inbox_against_a_model(
    senders: tuple[str, list[Worker]], steps: list[Step], memberships: list[set[int]]
) -> None:
    """Random interleavings of direct sends (single and bursts held in the senders' outboxes),
    group sends and receives on five channels of one instance, from two processes: each
    sender's messages reach each channel in order, once, all of them; ``ChannelFull`` only
    when the inbox holds ``capacity``; a group send drops for the whole inbox when it is full."""
    prefix, workers = senders
    asyncio.run(_run_model(prefix, workers, steps, memberships))


async def _run_model(
    prefix: str, workers: list[Worker], steps: list[Step], memberships: list[set[int]]
) -> None:
    layer = IPCChannelLayer(prefix=prefix, size="16MB", capacity=CAPACITY)
    try:
        channels = [await layer.new_channel("m") for _ in range(CHANNELS)]
        groups = [f"g{uuid.uuid4().hex[:10]}" for _ in memberships]
        for group, members in zip(groups, memberships, strict=True):
            for member in members:
                await layer.group_add(group, channels[member])
        expected: list[list[deque[tuple[str, int]]]] = [[deque(), deque()] for _ in channels]
        ids = iter(range(1_000_000))
        for kind, sender, target, size in steps:
            queued = layer.debug_state().queued  # the inbox's entries: only it has any
            if kind in ("send", "burst"):
                sends = [(channels[target], next(ids)) for _ in range(1 if kind == "send" else 3)]
                ok = (await ask(workers[sender], {"send": sends, "size": size}))["ok"]
                for (_, i), accepted in zip(sends, ok, strict=True):
                    if accepted:
                        assert queued < CAPACITY + SLACK
                        expected[target][sender].append(("m", i))
                        queued += 1
                    else:
                        assert queued >= CAPACITY, "ChannelFull with room in the inbox"
            elif kind == "group":
                i, members = next(ids), memberships[target % GROUPS]
                reply = await ask(workers[sender], {"group": groups[target % GROUPS], "i": i})
                full = queued >= CAPACITY
                assert reply["dropped"] == (len(members) if full else 0)
                for member in members if not full else ():
                    expected[member][sender].append(("g", i))
            elif any(expected[target]):
                message = await receive_soon(layer, channels[target])
                got = (message["type"], message["i"])
                assert expected[target][message["p"]][0] == got, "out of order or doubled"
                expected[target][message["p"]].popleft()
        for target, channel in enumerate(channels):
            while any(expected[target]):
                message = await receive_soon(layer, channel)
                assert expected[target][message["p"]].popleft() == (message["type"], message["i"])
            await assert_empty(layer, channel, 0.01)
        assert (await layer.stats())["queued"] == 0
        assert layer.debug_state().malformed == 0
    finally:
        await layer.close()
    assert verify(prefix).ok


async def test_thousands_from_two_processes_keep_each_senders_order(
    ipc_layer_factory: Factory, ipc_prefix: str, workers: list[Worker]
) -> None:
    """Two processes stream 3,000 direct sends each over 40 channels of one instance, with a
    group send to all of them every 25th, into an inbox of capacity 100 (senders retry while
    it is full; a group send it is full for is dropped, for all 40) while 40 receives drain it
    as they come: every message arrives once, in each sender's order."""
    layer = ipc_layer_factory(capacity=100)
    channels = [await layer.new_channel("v") for _ in range(40)]
    for channel in channels:
        await layer.group_add("all", channel)
    got: dict[str, list[tuple[int, str, int]]] = {channel: [] for channel in channels}
    total, enough = [math.inf], asyncio.Event()

    async def drain(channel: str) -> None:
        while True:
            message = await layer.receive(channel)
            got[channel].append((message["p"], message["type"], message["i"]))
            if sum(map(len, got.values())) >= total[0]:
                enough.set()

    draining = [asyncio.ensure_future(drain(channel)) for channel in channels]
    count, every = 3000, 25
    want: dict[tuple[str, int], list[tuple[str, int]]] = {}
    for me in range(2):
        workers.append(Worker("commands", ipc_prefix, me, 100))
        workers[me].tell(json.dumps({"stream": channels, "count": count, "every": every,
                                     "seed": me, "in": "all"}))  # fmt: skip
    for me, worker in enumerate(workers):
        reply = json.loads(await worker.line())
        assert reply["sent"] == count
        rng = random.Random(me)
        for channel in channels:
            want[channel, me] = []
        for i in range(count):
            want[rng.choice(channels), me].append(("m", i))
            if i % every == 0 and i not in reply["dropped"]:  # a full inbox drops a group send
                for channel in channels:
                    want[channel, me].append(("g", i))
    total[0] = sum(map(len, want.values()))
    if sum(map(len, got.values())) < total[0]:
        await asyncio.wait_for(enough.wait(), 30)
    await asyncio.sleep(0.05)  # anything more would arrive now
    for task in draining:
        task.cancel()
    for channel in channels:
        for me in range(2):
            assert [(kind, i) for p, kind, i in got[channel] if p == me] == want[channel, me]
    assert (await layer.stats())["queued"] == 0
    assert verify(ipc_prefix).ok


async def test_expired_entries_of_an_inbox_are_dropped_and_counted(
    ipc_layer_factory: Factory,
) -> None:
    """5,000 direct sends and 100 group sends expire in one inbox; receives then get only what
    came after, and every expired entry (a group send's counts once) is counted."""
    owner = ipc_layer_factory(size="64MB")
    sender = ipc_layer_factory(size="64MB", expiry=0.3, capacity=100_000)
    channels = [await owner.new_channel("e") for _ in range(50)]
    for channel in channels:
        await owner.group_add("room", channel)
    for i in range(5000):
        await sender.send(channels[i % 50], {"type": "old", "i": i, "b": b"x" * (i % 7 * 300)})
    for i in range(100):
        await sender.group_send("room", {"type": "old", "i": i})
    await asyncio.sleep(0.4)
    for channel in channels[:10]:
        await sender.send(channel, {"type": "new"})
    for channel in channels[:10]:
        assert (await receive_soon(owner, channel))["type"] == "new"
    for channel in channels[10:]:
        await assert_empty(owner, channel, 0.005)
    assert (await owner.stats())["expired"] == 5100
    assert (await owner.stats())["queued"] == 0
    assert owner.debug_state().queued == 0


async def test_a_thousand_members_of_another_process_share_one_entry_per_send(
    ipc_layer_factory: Factory, ipc_prefix: str, workers: list[Worker]
) -> None:
    """A group of 1,000 members on one instance: each group send from another process is one
    inbox entry (one copy of the payload), and each member gets every send in order."""
    layer = ipc_layer_factory(size="32MB")
    members = [await layer.new_channel("k") for _ in range(1000)]
    for member in members:
        await layer.group_add("thousand", member)
    workers.append(Worker("commands", ipc_prefix, 0, 100))
    for i in range(20):
        assert await ask(workers[0], {"group": "thousand", "i": i}) == {"dropped": 0}
    assert layer.debug_state().queued == 20
    for member in members:
        assert [(await receive_soon(layer, member))["i"] for _ in range(20)] == list(range(20))
    assert (await layer.stats())["queued"] == 0


async def test_malformed_entries_in_an_inbox_are_dropped_logged_and_counted(
    ipc_layer_factory: Factory, caplog: pytest.LogCaptureFixture
) -> None:
    """Entries no layer wrote (too short, a length past the end, a bad name, not ASCII) are
    dropped with one log line (throttled) and counted; the messages around them arrive."""
    owner, sender = ipc_layer_factory(), ipc_layer_factory()
    channel = await owner.new_channel("x")
    inbox = channel[: channel.index("!") + 1]
    await sender.send(channel, {"type": "before"})
    parts = sender.parts
    bad = [b"\x01", b"\xff\x00\x00\x00abc", b"\x03\x00\x00\x00a,!\x80", b"\x02\x00\x00\x00\xff\xfe"]
    with parts.lock as j:
        for entry in bad:
            parts.storage.queues.push(j, make_key(inbox), entry, time.monotonic() + 60, 100)
            j.commit()
    await sender.send(channel, {"type": "after"})
    with caplog.at_level(logging.ERROR, logger="layer.ipc.inbox"):
        assert (await receive_soon(owner, channel))["type"] == "before"
        assert (await receive_soon(owner, channel))["type"] == "after"
    assert owner.debug_state().malformed == len(bad)
    assert len([r for r in caplog.records if "malformed entry" in r.getMessage()]) == 1


@pytest.mark.timeout(300)
async def test_senders_killed_mid_group_send_leave_a_consistent_segment(
    ipc_layer_factory: Factory, ipc_prefix: str
) -> None:
    """A process group-sending to members in two inboxes and a normal channel is SIGKILLed at
    random moments, 12 times: the segment checks clean after each, and every member got a
    strictly increasing run of each sender's messages, the same for the members of one
    inbox (its entry is one mutation: all of them or none)."""
    owners = [ipc_layer_factory(capacity=100_000) for _ in range(2)]
    members = [await owner.new_channel("c") for owner in owners for _ in range(3)]
    for member in [*members, "crash.normal"]:
        await owners[0].group_add("crash", member)
    rng = random.Random(7)
    for _ in range(12):
        worker = Worker("group-loop", ipc_prefix, "crash")
        await worker.expect("ready")
        await asyncio.sleep(rng.uniform(0.005, 0.08))
        worker.kill()
        assert verify(ipc_prefix).ok
        runs: dict[str, list[int]] = {}
        for member in [*members, "crash.normal"]:
            owner = owners[members.index(member) // 3] if member in members else owners[0]
            runs[member] = []
            while True:
                try:
                    runs[member].append((await receive_soon(owner, member, 0.05))["i"])
                except TimeoutError:
                    break
            assert runs[member] == sorted(set(runs[member]))
        assert runs[members[0]] == runs[members[1]] == runs[members[2]]
        assert runs[members[3]] == runs[members[4]] == runs[members[5]]
    assert verify(ipc_prefix).ok


async def test_channels_of_one_inbox_received_by_short_event_loops(
    ipc_layer_factory: Factory, ipc_prefix: str, workers: list[Worker]
) -> None:
    """Sync code in a thread receives three channels of one inbox in turn, each receive in a
    fresh event loop with a 3 ms timeout (``async_to_sync``: loops end while the inbox's node
    waits, fired or not), while another process sends 200 to each, direct and grouped: each
    channel gets its messages once, in order, the others' held meanwhile."""
    layer = ipc_layer_factory(capacity=10_000)
    channels = [await layer.new_channel("t") for _ in range(3)]
    for channel in channels:
        await layer.group_add("loops", channel)
    got: dict[str, list[tuple[str, int]]] = {channel: [] for channel in channels}

    def receive_all() -> None:
        turn = 0
        while sum(map(len, got.values())) < 3 * 200:  # 100 direct and 100 grouped each
            channel = channels[turn % 3]
            turn += 1
            try:
                message = asyncio.run(asyncio.wait_for(layer.receive(channel), 0.003))
            except TimeoutError:
                continue
            got[channel].append((message["type"], message["i"]))

    receiving = asyncio.ensure_future(asyncio.to_thread(receive_all))
    workers.append(Worker("commands", ipc_prefix, 0, 10_000))
    want: dict[str, list[tuple[str, int]]] = {channel: [] for channel in channels}
    for i in range(300):
        target = channels[i % 3]
        assert (await ask(workers[0], {"send": [[target, i]]}))["ok"] == [True]
        want[target].append(("m", i))
        if i % 3 == 0:
            assert await ask(workers[0], {"group": "loops", "i": i}) == {"dropped": 0}
            for channel in channels:
                want[channel].append(("g", i))
    await asyncio.wait_for(receiving, 60)
    assert got == want


@settings(
    max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(plan=copies.steps)
def test_members_of_one_group_send_get_their_own_copies_against_a_model(
    ipc_prefix: str, plan: list[copies.Step]
) -> None:
    """Group and direct sends from another instance, receives taking an inbox run, held
    messages and receives waiting for the next: each member gets its messages in order, once,
    as its own dict; a flat message is decoded once for all the members (tests/layer/copies.py)."""

    async def run() -> None:
        sender = IPCChannelLayer(prefix=ipc_prefix, size="16MB")
        receiver = IPCChannelLayer(prefix=ipc_prefix, size="16MB")
        try:
            await copies.run_model(sender, receiver, plan)
            assert (await receiver.stats())["queued"] == 0
        finally:
            await sender.close()
            await receiver.close()
            unlink(ipc_prefix)

    asyncio.run(run())


async def test_a_thousand_members_each_get_their_own_copy_of_a_message_decoded_once(
    ipc_layer_factory: Factory,
) -> None:
    """1,000 members, half of them waiting for the first of 20 group sends: every member gets
    its own dict of each (mutations stay its own), decoded once when every value is immutable."""
    sender, receiver = ipc_layer_factory(size="32MB"), ipc_layer_factory(size="32MB")
    await copies.run_model(sender, receiver, copies.at_scale(1000, 20), size=1000)
    assert (await receiver.stats())["queued"] == 0
