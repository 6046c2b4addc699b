"""IPC backend beyond the conformance suite: real processes, crashes, restarts, limits, cleanup."""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import stat
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from layer.config import load
from layer.exceptions import ChannelFull, ConfigError, InvalidOption
from layer.ipc import IPCChannelLayer
from layer.ipc.check import verify
from layer.ipc.layout import GEOMETRY_OFF, U32
from tests.layer.ipc.fixture import SHM, Worker, shm_objects
from tests.layer.ipc.worker import send_retrying
from tests.layer.receiving import receive_soon

ROOT = Path(__file__).resolve().parents[3]
Factory = Callable[..., IPCChannelLayer]

# -- many processes ------------------------------------------------------------------------------


@pytest.mark.parametrize("spin", ["0", "0.0002"], ids=["sleeping", "spinning"])
async def test_four_producers_four_consumers_exactly_once_in_order(
    ipc_layer_factory: Factory,
    ipc_prefix: str,
    workers: list[Worker],
    spin: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Every wake by the doorbell FIFO (spin 0) and, by default, mostly by a spinning poll."""
    monkeypatch.setenv("IPC_TEST_SPIN", spin)
    producers, consumers, count, group_every = 4, 4, 25_000, 50
    layer = ipc_layer_factory(spin=float(spin))
    group_total = producers * len(range(0, count, group_every))
    for c in range(consumers):
        workers.append(Worker("consume", ipc_prefix, c, group_total))
        await workers[-1].expect("ready")
    sending = [Worker("produce", ipc_prefix, p, count, group_every) for p in range(producers)]
    workers.extend(sending)
    for producer in sending:
        assert (await producer.result())["sent"] == count
    for _ in range(consumers):
        await send_retrying(layer, "mp.work", {"type": "stop"})  # the backlog may be full
    seen = [await w.result() for w in workers[:consumers]]

    work = [tuple(m) for r in seen for m in r["work"]]
    assert len(work) == len(set(work)) == producers * count, "lost, duplicated or extra messages"
    for r in seen:
        for p in range(producers):
            mine = [i for q, i in r["work"] if q == p]
            assert mine == sorted(mine), f"producer {p}'s order changed"
        expected = sorted((p, i) for p in range(producers) for i in range(0, count, group_every))
        assert sorted(map(tuple, r["group"])) == expected
        for p in range(producers):
            mine = [i for q, i in r["group"] if q == p]
            assert mine == sorted(mine)
    assert (await layer.stats())["queued"] == 0


async def test_receives_cancelled_in_another_process_lose_nothing(
    ipc_layer_factory: Factory, ipc_prefix: str, workers: list[Worker]
) -> None:
    """Timed-out receives there, sends here: every message once, in order (wakes passed on)."""
    layer = ipc_layer_factory(capacity=10_000)  # the receiver may fall behind: never full
    receiver = Worker("impatient", ipc_prefix, 2000)
    workers.append(receiver)
    await receiver.expect("ready")
    for i in range(2000):
        await layer.send("c.flaky", {"type": "n", "i": i})
        if i % 10 == 0:  # gaps in which the other side's receives time out
            await asyncio.sleep(0.003)
    outcome = await receiver.result()
    assert outcome["got"] == list(range(2000))
    print(f"{outcome['timeouts']} receives timed out while messages flowed")


# -- crashes -------------------------------------------------------------------------------------


async def test_sigkill_at_random_moments_never_stops_or_tears(
    ipc_layer_factory: Factory, ipc_prefix: str, workers: list[Worker]
) -> None:
    """Victims in tight mutation loops die 30 times; a checked stream flows throughout."""
    layer = ipc_layer_factory()
    count = 6_000
    receiver = Worker("stream", ipc_prefix, "receive", count)
    workers.append(receiver)
    await receiver.expect("ready")
    sender = Worker("stream", ipc_prefix, "send", count)
    workers.append(sender)
    rng = random.Random(4)
    for _ in range(30):
        victim = Worker("victim", ipc_prefix)
        workers.append(victim)
        await victim.expect("ready")
        await asyncio.sleep(rng.uniform(0.005, 0.1))
        victim.kill()
    outcome = await receiver.result()
    assert outcome["received"] == count
    print(f"max stall {outcome['max_stall']:.3f}s, journal recoveries {outcome['recoveries']}")
    assert await sender.result(within=60) == {"sent": count}
    await layer.group_send("k.group", {"type": "after"})  # the dead members' structures work
    await layer.send("k.after", {"type": "after"})
    assert (await receive_soon(layer, "k.after"))["type"] == "after"
    report = verify(ipc_prefix)  # what the 30 deaths left is consistent
    assert report.ok, report.problems


@pytest.mark.parametrize("what", ["push", "take", "take_run", "flush", "run", "fire", "register"])
async def test_killed_while_holding_the_lock_mid_mutation(
    ipc_layer_factory: Factory, ipc_prefix: str, workers: list[Worker], what: str
) -> None:
    layer = ipc_layer_factory()
    await layer.send("h.chan", {"type": "kept"})
    await layer.group_add("h.group", "h.member")
    holder = Worker("hold", ipc_prefix, what)
    workers.append(holder)
    await holder.expect("holding")
    holder.kill()
    await layer.send("h.other", {"type": "works"})  # the lock is free again at once
    assert layer.debug_state().recoveries == 1
    assert (await receive_soon(layer, "h.other"))["type"] == "works"
    if what == "flush":  # a flush that was started is finished by the next lock holder
        assert (await layer.stats())["queued"] == 0
        await layer.group_send("h.group", {"type": "x"})
        assert (await layer.stats())["queued"] == 0
    else:  # a half-done push, run of pushes or take is undone: only the message sent before
        assert (await receive_soon(layer, "h.chan"))["type"] == "kept"
        if what == "take_run":  # and the holder's three, back in the channel in order
            for _ in range(3):
                assert (await receive_soon(layer, "h.chan"))["type"] == "more"
        assert (await layer.stats())["queued"] == 0
        await layer.group_send("h.group", {"type": "x"})
        assert (await receive_soon(layer, "h.member"))["type"] == "x"
    report = verify(ipc_prefix)
    assert report.ok, report.problems


async def test_eight_processes_starting_together_initialise_once(
    ipc_layer_factory: Factory, ipc_prefix: str, workers: list[Worker]
) -> None:
    starters = [Worker("start", ipc_prefix) for _ in range(8)]
    workers.extend(starters)
    for starter in starters:
        starter.tell("go")
    outcomes = [await s.result() for s in starters]
    assert sum(o["initialised"] for o in outcomes) == 1
    layer = ipc_layer_factory()
    assert not layer.debug_state().created
    got = [await receive_soon(layer, "s.shared") for _ in range(8 * 50)]
    assert len({(m["pid"], m["i"]) for m in got}) == 400


# -- limits --------------------------------------------------------------------------------------


async def test_full_segment_raises_channel_full_and_recovers(ipc_layer_factory: Factory) -> None:
    layer = ipc_layer_factory(size="1MB", capacity=100_000)
    blob = os.urandom(20_000)
    sent = 0
    with pytest.raises(ChannelFull, match="IPC segment is full"):
        while True:
            await layer.send("full", {"type": "b", "n": sent, "data": blob})
            sent += 1
    assert sent > 10
    assert (await layer.stats())["queued"] == sent
    for n in range(sent):
        message = await receive_soon(layer, "full")
        assert message["n"] == n and message["data"] == blob
    await layer.send("full", {"type": "b", "n": -1, "data": blob})  # room again
    assert (await receive_soon(layer, "full"))["n"] == -1


async def test_a_segment_of_an_older_layout_is_refused(ipc_prefix: str) -> None:
    """Version 2 processes do not bump the table generation: they must never share a segment
    with processes that cache entry indexes."""
    old = IPCChannelLayer(prefix=ipc_prefix, size="4MB")
    U32.pack_into(old.parts.segment.mm, GEOMETRY_OFF, 2)  # what a version-2 process created
    try:
        with pytest.raises(InvalidOption, match=r"layout version 2.*python -m layer\.ipc clean"):
            IPCChannelLayer(prefix=ipc_prefix, size="4MB")
    finally:
        await old.close(unlink=True)


def test_undersized_dev_shm_is_a_clear_error(ipc_prefix: str) -> None:
    free = os.statvfs(SHM).f_bavail * os.statvfs(SHM).f_frsize
    with pytest.raises(InvalidOption) as info:
        IPCChannelLayer(prefix=ipc_prefix, size=free + (1 << 30))
    text = str(info.value)
    for needle in ("/dev/shm is", "free", "--shm-size", "shm_size", "emptyDir", "medium: Memory"):
        assert needle in text
    assert shm_objects(ipc_prefix) == []


@pytest.mark.parametrize(
    ("options", "error"),
    [
        ({"prefix": "bad/prefix"}, "prefix"),
        ({"size": "lots"}, "size"),
        ({"slot_size": 100}, "slot_size"),
        ({"group_access": "yes"}, "group_access"),
        ({"spin": -1}, "spin"),
        ({"spin": "fast"}, "spin"),
    ],
)
def test_bad_ipc_options_are_named(options: dict, error: str) -> None:
    with pytest.raises(InvalidOption, match=error):
        IPCChannelLayer(**{"prefix": "unused-prefix", **options})


# -- isolation, permissions, cleanup -------------------------------------------------------------


async def test_prefixes_are_isolated(ipc_layer_factory: Factory, ipc_prefix: str) -> None:
    one = ipc_layer_factory()
    two = IPCChannelLayer(prefix=f"{ipc_prefix}x", size="4MB")
    try:
        await one.send("same", {"type": "one"})
        await two.group_add("g", "same")
        await two.flush()
        assert (await two.stats())["queued"] == 0
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(two.receive("same"), 0.2)
        assert (await receive_soon(one, "same"))["type"] == "one"
    finally:
        await two.close(unlink=True)
    assert shm_objects(f"{ipc_prefix}x") == []


async def test_modes_default_private_and_optionally_group(ipc_prefix: str) -> None:
    private = IPCChannelLayer(prefix=ipc_prefix, size="4MB")
    shared = IPCChannelLayer(prefix=f"{ipc_prefix}g", size="4MB", group_access=True)
    try:
        for name in shm_objects(ipc_prefix):
            assert stat.S_IMODE(os.stat(f"{SHM}/{name}").st_mode) == 0o600, name
        for name in shm_objects(f"{ipc_prefix}g"):
            assert stat.S_IMODE(os.stat(f"{SHM}/{name}").st_mode) == 0o660, name
    finally:
        await private.close(unlink=True)
        await shared.close(unlink=True)


async def test_close_unlink_removes_everything(ipc_prefix: str) -> None:
    layer = IPCChannelLayer(prefix=ipc_prefix, size="4MB")
    other = IPCChannelLayer(prefix=ipc_prefix, size="4MB")
    assert len(shm_objects(ipc_prefix)) == 3  # the segment and one doorbell FIFO per instance
    await other.close()
    assert len(shm_objects(ipc_prefix)) == 3  # a plain close leaves the shared data
    await layer.close(unlink=True)
    assert shm_objects(ipc_prefix) == []


def test_clean_command_removes_everything(ipc_prefix: str) -> None:
    kept = IPCChannelLayer(prefix=ipc_prefix, size="4MB")
    asyncio.run(kept.close())
    assert shm_objects(ipc_prefix)
    done = subprocess.run(
        [sys.executable, "-m", "layer.ipc", "clean", "--prefix", ipc_prefix],
        capture_output=True, text=True, cwd=ROOT, check=True,
    )  # fmt: skip
    assert "removed 2 object(s)" in done.stdout
    assert shm_objects(ipc_prefix) == []
    bad = subprocess.run(
        [sys.executable, "-m", "layer.ipc", "clean", "--prefix", "../x"],
        capture_output=True, text=True, cwd=ROOT,
    )  # fmt: skip
    assert bad.returncode == 2 and "prefix" in bad.stderr


def test_config_file_builds_the_ipc_layer(monkeypatch: pytest.MonkeyPatch, ipc_prefix: str) -> None:
    monkeypatch.setenv("IPC_PREFIX", ipc_prefix)
    monkeypatch.setenv("IPC_SIZE", "4MB")
    layer = load(ROOT / "config" / "ipc.yaml")["default"].build()
    try:
        assert isinstance(layer, IPCChannelLayer)
        assert layer.prefix == ipc_prefix and layer.size == 4 << 20
    finally:
        asyncio.run(layer.close(unlink=True))
    monkeypatch.setenv("IPC_SIZE", "huge")
    with pytest.raises(ConfigError, match="size"):
        load(ROOT / "config" / "ipc.yaml")["default"].build()


async def test_emptied_channels_are_reclaimed_when_entries_run_out(
    ipc_layer_factory: Factory,
) -> None:
    layer = ipc_layer_factory(size="1MB")  # 1,024 entries
    assert layer.debug_state().geometry.n_entries == 1024
    for n in range(3000):
        await layer.send(f"once.{n}", {"type": "x", "n": n})
        assert (await receive_soon(layer, f"once.{n}"))["n"] == n
    stats = await layer.stats()
    assert stats["channels"] == 0 and stats["queued"] == 0
    kept = [f"kept.{n}" for n in range(1000)]
    for name in kept:
        await layer.send(name, {"type": "k"})
    with pytest.raises(ChannelFull, match="no free entries"):
        for n in range(100):
            await layer.send(f"more.{n}", {"type": "m"})
    for name in kept:
        assert (await receive_soon(layer, name))["type"] == "k"


def test_a_layer_inherited_through_fork_refuses_to_work(ipc_prefix: str) -> None:
    layer = IPCChannelLayer(prefix=ipc_prefix, size="4MB")
    child = os.fork()
    if child == 0:  # the child: its inherited layer must not share the parent's lock
        try:
            asyncio.run(layer.send("forked", {"type": "x"}))
        except RuntimeError as exc:
            os._exit(0 if "before os.fork()" in str(exc) else 1)
        os._exit(2)
    assert os.waitpid(child, 0)[1] == 0
    asyncio.run(layer.send("forked", {"type": "x"}))  # the parent is unaffected
    asyncio.run(layer.close(unlink=True))


async def test_debug_state_is_a_snapshot_of_what_the_instance_and_segment_hold(
    ipc_layer_factory: Factory,
) -> None:
    """The tests' one seam: counts, free slots, parked receives, messages held ahead and
    held sends, as the operations that make them leave them."""
    layer, other = ipc_layer_factory(), ipc_layer_factory()
    empty = layer.debug_state()
    assert (empty.queued, empty.channels, empty.groups, empty.outbox) == (0, 0, 0, 0)
    assert empty.created and not other.debug_state().created
    assert empty.waker != other.debug_state().waker
    for i in range(3):
        await other.send("d.q", {"type": "q", "i": i})
    assert other.debug_state().outbox == 2  # the first send went in; the next two are held
    await other.group_add("d.g", "d.q")
    await asyncio.sleep(0)  # the loop turn ends: the held sends go in
    state = layer.debug_state()
    assert (state.queued, state.channels, state.groups) == (3, 1, 1)
    assert state.free_slots == empty.free_slots - 3
    await layer.receive("d.q")  # a streaming receive on a shared channel takes no more yet
    await layer.receive("d.q")  # ... the second one in a row takes the rest ahead
    assert layer.debug_state().held == {"d.q": 1} and layer.debug_state().queued == 0
    waiting = asyncio.ensure_future(layer.receive("d.w"))
    await asyncio.sleep(0.01)
    assert layer.debug_state().parked == {"d.w": 1}
    waiting.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await waiting
    assert not layer.debug_state().parked
    await layer.flush()
    assert layer.debug_state().epoch == empty.epoch + 1 and not layer.debug_state().held
