"""IPC message storage: the block allocator against a model, rollback of any allocator step,
messages of every size across processes, a full segment, and the journal at the largest
message (layer/ipc/blocks.py, extents.py)."""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from collections.abc import Callable

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from layer.exceptions import ChannelFull, InvalidOption
from layer.ipc import IPCChannelLayer
from layer.ipc.blocks import NoRoom, check_lists
from layer.ipc.check import verify
from layer.ipc.extents import largest_payload, plan, step_bound
from layer.ipc.layout import G_OFF, JOURNAL_END, JOURNAL_OFF, U32
from layer.ipc.segment import unlink
from tests.layer.ipc.fixture import Worker

Factory = Callable[..., IPCChannelLayer]
Held = dict[int, int]  # first slot -> order of the blocks the model holds


def settled_problems(layer: IPCChannelLayer, held: Held) -> list[str]:
    """``check_lists`` of the segment with the model's blocks marked in use, plus any slot
    below the bump pointer that is neither (a leak)."""
    store = layer.parts.storage
    mm, g = store.mm, store.geometry
    bump = min(U32.unpack_from(mm, G_OFF + 8)[0], g.n_slots)
    marks = bytearray(bump)
    problems: list[str] = []
    for block, order in held.items():
        if any(marks[block : block + (1 << order)]):
            problems.append(f"held block {block} of order {order} overlaps another")
        marks[block : block + (1 << order)] = b"\x02" * (1 << order)
    cur, count = U32.unpack_from(mm, G_OFF)[0], U32.unpack_from(mm, G_OFF + 4)[0]
    for _ in range(count):  # the slot cache
        if cur >= bump or marks[cur]:
            problems.append(f"the slot cache reaches slot {cur}, in use or past the bump")
            break
        marks[cur] = 1
        cur = U32.unpack_from(mm, g.slots + cur * g.slot_size)[0]
    check_lists(bytearray(mm[: g.slots + bump * g.slot_size]), g, marks, problems.append)
    if leaked := marks.count(0):
        problems.append(f"{leaked} slots are neither free nor held")
    free = store.blocks.free_slots()
    if free != g.n_slots - sum(1 << order for order in held.values()):
        problems.append(f"free_slots() says {free}")
    return problems


OPS = st.lists(
    st.one_of(
        st.tuples(st.just("alloc"), st.sampled_from([0, 0, 1, 2, 2, 3, 5, 9])),
        st.tuples(st.just("release"), st.integers(0, 1 << 16)),
        st.tuples(st.just("refill"), st.sampled_from([0, 1, 2, 3, 6]), st.integers(1, 100)),
        st.tuples(st.just("drain"), st.integers(1, 50)),
    ),
    max_size=120,
)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops=OPS, rollbacks=st.sets(st.integers(0, 120), max_size=40))
def test_blocks_against_a_model(ops: list[tuple], rollbacks: set[int]) -> None:
    """Random allocations, frees (cached or merged), refills and drains on a small real
    segment: blocks never overlap, nothing leaks, counts and lists agree after every step;
    and steps rolled back (what recovery from a SIGKILL does) leave the state before them."""
    prefix = f"t{uuid.uuid4().hex[:12]}"
    layer = IPCChannelLayer(prefix=prefix, size="2MB")
    try:
        blocks = layer.parts.storage.blocks
        held: Held = {}
        with layer.parts.lock as j:
            for i, op in enumerate(ops):
                before = dict(held)
                try:
                    if op[0] == "alloc":
                        order = min(op[1], blocks.top)
                        block = blocks.alloc(j, order)
                        held[block] = order
                        at = blocks.base + block * blocks.slot_size  # a message's link, length
                        blocks.mm[at : at + 8] = b"\xaa" * 8
                    elif op[0] == "release" and held:
                        block = sorted(held)[op[1] % len(held)]
                        blocks.release(j, block, held.pop(block), cache=op[1] % 3 != 0)
                    elif op[0] == "refill":
                        blocks.refill(j, min(op[1], blocks.top - 1), op[2])
                    elif op[0] == "drain":
                        j.commit()
                        blocks.drain(j, op[1])
                except NoRoom:
                    j.rollback()
                    held = before
                    continue
                if i in rollbacks:
                    j.rollback()
                    held = before
                else:
                    j.commit()
                problems = settled_problems(layer, held)
                assert not problems, (i, op, problems)
    finally:
        asyncio.run(layer.close())
        unlink(prefix)


def test_plans_are_one_extent_up_to_small_then_few_and_tight() -> None:
    slot, top = 256, 12
    data = [(slot << order) - 4 for order in range(top + 1)]
    for total in [1, 252, 253, 1020, 1021, 65_548, 131_068]:
        (order,) = plan(total, slot, top)
        assert data[order] >= total and (order == 0 or data[order - 1] < total)
    for total in [131_069, 200_000, 1 << 20, 3 << 20, (8 << 20) + 77]:
        orders = plan(total, slot, top)
        room = sum(data[order] for order in orders)
        assert room >= total and list(orders) == sorted(orders, reverse=True)
        assert len([order for order in orders if order < top]) <= 4
        assert room - total <= total // 8 + slot  # at most ~1/8 unused


async def test_messages_of_every_size_cross_processes_intact(
    ipc_layer_factory: Factory, ipc_prefix: str, workers: list[Worker]
) -> None:
    """200 messages from 1 byte to 3 MB (one extent, several, several top-order blocks) from
    another process through a 16 MB segment that fills up on the way: each arrives once, in
    order, byte for byte."""
    layer = ipc_layer_factory(capacity=10_000)
    sender = Worker("sized", ipc_prefix, "z.big", 200, 7)
    workers.append(sender)
    rng = random.Random(7)
    for i in range(200):
        size = int(10 ** rng.uniform(0, 6.5))
        message = await asyncio.wait_for(layer.receive("z.big"), 30)
        assert message["i"] == i and message["body"] == bytes([i % 251]) * size, i
    await sender.expect("sent")
    report = verify(ipc_prefix)
    assert report.ok and report.queued == 0, report.problems


async def test_a_full_segment_refuses_clearly_and_keeps_what_it_holds(
    ipc_layer_factory: Factory, ipc_prefix: str
) -> None:
    layer = ipc_layer_factory(size="4MB", capacity=100_000)
    sent = 0
    with pytest.raises(
        ChannelFull, match=r"IPC segment is full: a 1000\d\d-byte message needs 512"
    ):
        while True:
            await layer.send("f.q", {"type": "f", "i": sent, "body": bytes(100_000)})
            sent += 1
    assert sent > 10
    for i in range(sent):
        assert (await layer.receive("f.q"))["i"] == i
    assert verify(ipc_prefix).ok


async def test_space_cached_for_small_messages_serves_a_large_one(
    ipc_layer_factory: Factory, ipc_prefix: str
) -> None:
    """A segment filled with one-slot messages, then emptied: its slots sit in the slot cache
    (unmerged), and a large message needs contiguous space: the cache is drained into the buddy
    lists, merging, and the send succeeds."""
    layer = ipc_layer_factory(size="4MB", capacity=100_000)
    n = 0
    with pytest.raises(ChannelFull, match="IPC segment is full"):
        while True:
            await layer.send("s.q", {"type": "s", "i": n})
            n += 1
    for i in range(n):
        assert (await layer.receive("s.q"))["i"] == i
    big = {"type": "b", "body": bytes(range(256)) * 4096}  # 1 MiB
    started = time.perf_counter()
    await layer.send("s.big", big)
    print(f"{n} one-slot messages' slots merged for a 1 MiB send in "
          f"{time.perf_counter() - started:.3f} s")  # fmt: skip
    assert await layer.receive("s.big") == big
    assert verify(ipc_prefix).ok


async def test_the_largest_message_fits_one_journal_step(
    ipc_layer_factory: Factory, journal_steps: list[int]
) -> None:
    """An 8 MB message (the default max_message_size) written and freed: the largest journal
    step stays within the bound the layer checks ``max_message_size`` against."""
    steps = journal_steps
    layer = ipc_layer_factory(size="64MB")
    message = {"type": "big", "body": bytes(8 * 1024 * 1024 - 100)}
    await layer.send("j.big", message)
    assert (await layer.receive("j.big"))["body"] == message["body"]
    extents = layer.parts.storage.extents
    bound = 400 + step_bound(extents.plan(len(message["body"]) + 40), extents.top)
    assert max(steps) <= bound <= JOURNAL_END - JOURNAL_OFF, (max(steps), bound)


def test_a_max_message_size_the_journal_cannot_free_is_refused(ipc_prefix: str) -> None:
    most = largest_payload(64, 14)
    with pytest.raises(InvalidOption, match=f"at most {most}"):
        IPCChannelLayer(prefix=ipc_prefix, size="256MB", slot_size=64, max_message_size="200MB")
    unlink(ipc_prefix)
