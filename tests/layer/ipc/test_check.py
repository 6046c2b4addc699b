"""``layer.ipc.check.verify``: clean on consistent segments (busy ones too), and each kind of
corruption, written into a real segment's bytes, detected; ``python -m layer.ipc check``."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from layer.ipc.check import NoSegment, verify
from layer.ipc.layout import JSTATE_OFF, QUEUED
from tests.layer.ipc.corruptions import (
    CORRUPTIONS,
    Factory,
    Known,
    Writes,
    member_prev,
    w32,
    written,
)
from tests.layer.ipc.fixture import Worker, shm_objects
from tests.layer.ipc.worker import send_retrying

ROOT = Path(__file__).resolve().parents[3]


async def test_known_state_is_consistent(ipc_layer_factory: Factory, ipc_prefix: str) -> None:
    known = Known(ipc_layer_factory)
    assert verify(ipc_prefix).summary() == (
        "0 channels, 0 queued messages, 0 slots used / "
        f"{known.store.geometry.n_slots} free, 0 groups, 0 members, 0 waiters"
    )
    await known.build()
    report = verify(ipc_prefix)
    assert report.ok, report.problems
    # channels q, big and w (f and x have neither messages nor waiters); 4 + 1 messages
    assert (report.channels, report.queued, report.groups, report.members) == (3, 5, 1, 3)
    assert report.slots_used == 4 + known.store.queues.slots_for(1500 + 20)
    assert report.waiters == 2 and report.repaired == 0
    known.close()


@pytest.mark.parametrize(
    ("corrupt", "expected"), CORRUPTIONS, ids=[c.__name__ for c, _ in CORRUPTIONS]
)
async def test_each_corruption_is_detected(
    ipc_layer_factory: Factory,
    ipc_prefix: str,
    corrupt: Callable[[Known], Writes],
    expected: str,
) -> None:
    """Clean before, the expected problem with the bytes written, clean again once restored."""
    known = Known(ipc_layer_factory)
    await known.build()
    assert verify(ipc_prefix).ok
    with written(known.store.mm, corrupt(known)):
        report = verify(ipc_prefix)
    if "{}" in expected:  # the slot named in the message is the one corrupted
        expected = expected.format(known.head_tail_count("q")[1])
    assert any(expected in problem for problem in report.problems), report.problems
    assert verify(ipc_prefix).ok
    known.close()


async def test_a_dead_holders_mutation_is_repaired_before_the_check(
    ipc_layer_factory: Factory, ipc_prefix: str, workers: list[Worker]
) -> None:
    layer = ipc_layer_factory()
    await layer.send("h.chan", {"type": "kept"})
    holder = Worker("hold", ipc_prefix, "push")
    workers.append(holder)
    await holder.expect("holding")
    holder.kill()
    report = verify(ipc_prefix)
    assert report.ok and report.repaired == 1, report.problems
    assert report.queued == 1


async def test_a_corrupt_journal_is_reported_not_applied(
    ipc_layer_factory: Factory, ipc_prefix: str
) -> None:
    layer = ipc_layer_factory()
    await layer.send("j.chan", {"type": "kept"})
    with written(layer.parts.storage.mm, [w32(JSTATE_OFF, 7)]):  # a length no journal has
        report = verify(ipc_prefix)
    assert len(report.problems) == 1, report.problems
    assert report.problems[0].startswith("the lock could not be taken: ")
    assert "undo journal is corrupted" in report.problems[0]
    assert verify(ipc_prefix).ok


async def test_a_register_rolled_back_leaves_its_node_free(
    ipc_layer_factory: Factory, ipc_prefix: str, workers: list[Worker]
) -> None:
    """Found by the check at the end of the SIGKILL test: a holder killed while registering a
    waiter on a node from the free list. The rollback puts the node back on the free list but
    leaves the words the registration wrote (its entry, waker and generation), so the node
    looks like the dead instance's waiter; reaping that instance then unlinks it from a channel
    it is not on and frees it again: the free node list loops on it, CHANNELS drops by one, and
    the next two registrations share the node."""
    layer = ipc_layer_factory()
    waiting = asyncio.ensure_future(layer.receive("r.other"))  # its timer reaps the dead
    await asyncio.sleep(0.05)
    holder = Worker("hold", ipc_prefix, "register_alloc")
    workers.append(holder)
    await holder.expect("holding")
    holder.kill()
    report = verify(ipc_prefix)  # the rollback
    assert report.repaired == 1
    assert report.ok, report.problems
    await asyncio.sleep(0.6)  # the reap
    report = verify(ipc_prefix)
    assert report.ok, report.problems
    waiting.cancel()


async def test_clean_throughout_a_busy_segment(
    ipc_layer_factory: Factory, ipc_prefix: str, workers: list[Worker]
) -> None:
    """Checks taken while four processes mutate everything (sends of one and many slots,
    group sends, take-ahead, waits, cancellations) each see a consistent segment; then the
    mutators are killed, and what they left (dead waiters, held messages lost) is consistent."""
    layer = ipc_layer_factory()
    consumer = Worker("drain", ipc_prefix, "busy.work")
    workers.append(consumer)
    await consumer.expect("ready")
    producers = [Worker("stream-to", ipc_prefix, p, "busy.work", 20_000) for p in range(2)]
    victims = [Worker("victim", ipc_prefix)]  # two would fill the segment (each other's sends)
    workers.extend(producers + victims)
    for victim in victims:
        await victim.expect("ready")
    checks = busiest = 0
    while any(p.proc.poll() is None for p in producers) or checks < 30:
        report = await asyncio.to_thread(verify, ipc_prefix)
        assert report.ok, report.problems
        checks += 1
        busiest = max(busiest, report.queued)
        await asyncio.sleep(0.02)
    assert busiest > 100, "the checks saw an idle segment"
    for victim in victims:
        victim.kill()
    report = verify(ipc_prefix)
    assert report.ok, report.problems
    assert report.members == 1  # the victim's membership of k.group
    await send_retrying(layer, "busy.work", {"type": "stop"})
    assert len((await consumer.result())["got"]) == 2 * 20_000
    assert verify(ipc_prefix).ok
    print(f"{checks} checks while busy, up to {busiest} queued; last: {report.summary()}")


def run_check(prefix: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "layer.ipc", "check", "--prefix", prefix],
        capture_output=True, text=True, cwd=ROOT, timeout=60,
    )  # fmt: skip


async def test_check_command(ipc_layer_factory: Factory, ipc_prefix: str) -> None:
    missing = run_check(ipc_prefix)
    assert missing.returncode == 2
    assert f"no IPC segment for prefix {ipc_prefix!r}" in missing.stderr
    assert shm_objects(ipc_prefix) == []  # the check created nothing

    known = Known(ipc_layer_factory)
    await known.build()
    consistent = run_check(ipc_prefix)
    assert consistent.returncode == 0, consistent.stdout
    assert consistent.stdout.splitlines() == [
        f"consistent: 3 channels, 5 queued messages, {4 + known.store.queues.slots_for(1520)} slots "
        f"used / {known.store.blocks.free_slots()} free, 1 groups, 3 members, 2 waiters"
    ]

    with written(known.store.mm, [w32(QUEUED, 7), *member_prev(known)]):
        broken = run_check(ipc_prefix)
    assert broken.returncode == 1
    lines = broken.stdout.splitlines()
    assert lines[0] == f"2 problem(s) in the segment of prefix {ipc_prefix!r}:"
    assert any("QUEUED is 7 but the channels' counts sum to 5" in line for line in lines)
    assert any("member 'm2' of group 'g' has a wrong prev" in line for line in lines)
    assert run_check(ipc_prefix).returncode == 0

    bad = run_check("../x")
    assert bad.returncode == 2 and "prefix" in bad.stderr
    known.close()


def test_verify_raises_for_a_missing_segment(ipc_prefix: str) -> None:
    with pytest.raises(NoSegment, match="no IPC segment"):
        verify(ipc_prefix)
    assert shm_objects(ipc_prefix) == []
