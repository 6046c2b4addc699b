"""Model-based test of every backend in ``BACKENDS`` (issue 18).

Hypothesis' stateful testing drives random sequences of send (bursts of up to a few hundred,
several channels, one- and multi-slot sizes), receive (with timeouts and cancellation), several
receivers at once, new_channel, group_add / group_discard / group_send (groups of hundreds),
flush and time passing against a fresh layer per example, and checks every result against the
reference model in ``tests/layer/spec_model.py``.

The layer is async and the state machine is not: each example owns an event loop
(``asyncio.new_event_loop()``) and every rule runs its calls with ``run_until_complete``.

Clock: for the four known backends, a :class:`SkewClock` replaces the ``time`` module inside
every ``layer.*`` module that imported it; its ``monotonic()`` and ``time()`` are the real
monotonic clock plus a skew that the "time passes" rule advances, so expiries are crossed
exactly and at once while the event loop's own clock is untouched. Redis expiries are stamped
client-side (layer/redis/layer.py, receiver.py pass ``now`` to the scripts; no script reads the
server's TIME), and the keys' server-side TTLs (expiry + 1 s of real time) can only drop entries
the skewed clock already considers expired, because the skew never goes back. A backend added to
``BACKENDS`` later runs with the real clock (short expiries, real sleeps) and the model's most
tolerant rules until it is given a profile here.

``LAYER_SOAK_SECONDS=600`` (``make soak``) runs batches of examples on every backend for that
long in total and prints examples, operations and failures.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import inspect
import math
import os
import pkgutil
import sys
import time
import uuid
from collections import Counter
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any, ClassVar, TypeVar

import pytest
from hypothesis import HealthCheck, Phase, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

import layer
from layer.base import BaseChannelLayer
from layer.exceptions import ChannelFull, InvalidName, MessageTooLarge
from layer.flow import PREFETCH
from layer.ipc import IPCChannelLayer
from layer.ipc.extents import plan
from layer.ipc.journal import QUEUE_RECORD_SIZE as QUEUE_RECORD  # one push/pop: 104 bytes
from layer.ipc.layout import JOURNAL_END, JOURNAL_OFF, MSG, RING, Geometry
from layer.ipc.outbox import BUDGET, WINDOW
from layer.messages import encode
from layer.redis.connection import _HIGH_WATER
from layer.redis.poppers import INBOX_BATCH
from layer.redis.sends import WINDOW as REDIS_WINDOW
from tests.layer.conftest import BACKENDS, LayerFactory
from tests.layer.ipc.fixture import shm_objects
from tests.layer.spec_model import (
    Entry,
    Rules,
    SpecModel,
    Violation,
    per_channel,
    per_routing_name,
)

T = TypeVar("T")

# -- the internal sizes the rules must reach, read off the code --------------------------------

SLOT: int = inspect.signature(IPCChannelLayer.__init__).parameters["slot_size"].default  # 256
SLOT_DATA = SLOT - 4  # a slot's ``next`` word, then data
ONE_SLOT = SLOT_DATA - MSG.size  # the longest payload that fits one slot (240)
IPC_SIZE = 64 << 20
IPC_GEOMETRY = Geometry.plan(IPC_SIZE, SLOT)
JOURNAL_RECORDS = (JOURNAL_END - JOURNAL_OFF) // QUEUE_RECORD  # 152 queue records fit the journal
EXTENT_DATA = [(SLOT << order) - 4 for order in range(IPC_GEOMETRY.max_order + 1)]
SIZES = {
    "tiny": 32,
    "one_slot": ONE_SLOT,
    "two_slots": ONE_SLOT + 1,  # a 2-slot extent
    "one_extent": EXTENT_DATA[2] - MSG.size,  # fills a 4-slot extent exactly
    "next_order": EXTENT_DATA[2] - MSG.size + 1,  # an 8-slot extent
    "large": 20_000,  # a 128-slot extent
    "extents": 150_000,  # several extents: larger than the largest one-extent message
}
# Bursts: a few, the counts either side of every window (one more than a Redis inbox pop takes
# included), and anything up to a few hundred.
EDGES = sorted(
    {JOURNAL_RECORDS, PREFETCH, WINDOW, RING, REDIS_WINDOW, BUDGET // SIZES["large"] + 1}
    | {n + 1 for n in (JOURNAL_RECORDS, PREFETCH, WINDOW, RING, REDIS_WINDOW, INBOX_BATCH)}
)
COUNTS_UP_TO = 300
COUNTS = st.one_of(st.integers(1, 4), st.sampled_from(EDGES), st.integers(5, COUNTS_UP_TO))
BIG_GROUP = 600  # members of the big groups; a Redis flush unlinks keys 500 at a time
VOLUME = IPC_GEOMETRY.n_slots // 2  # slots' worth of messages stored per example, at most
LONG = 10.0  # seconds a receive that must return may take before the test calls it lost
SHORT = [0, 0.001, 0.02]  # timeouts of receives that may return nothing

POOL = [
    "a", "b.c", "cap.x", "cap.p!z", "proc!a", "proc!b", "proc!", "q?x", "L" * 99, "gm.1",
    "gx!1",
]  # fmt: skip
GROUPS = ["g", "room.big", "G" * 99]
FRESH, FRESH_LOCAL = "(fresh)", "(fresh!)"  # a new name each time: see LayerMachine.pick
SOAK_SECONDS = float(os.environ.get("LAYER_SOAK_SECONDS", "0") or 0)


# -- messages ---------------------------------------------------------------------------------


def make_message(msg_id: int, size: int) -> dict[str, Any]:
    """Message ``msg_id``, ``size`` bytes encoded; its padding depends on the id, so a message
    stitched from another's bytes shows."""
    base = len(encode({"type": "model.m", "id": msg_id, "pad": b""}))
    pad = size - base
    pad -= (pad >= 256) + 2 * (pad >= 65536)  # bin16 / bin32 headers are longer
    return {"type": "model.m", "id": msg_id, "pad": bytes([msg_id % 251]) * max(pad, 0)}


def extents_of(size: int) -> tuple[int, ...]:
    return plan(size + MSG.size, SLOT, IPC_GEOMETRY.max_order)


def slots_for(size: int) -> int:
    return sum(1 << order for order in extents_of(size))


# -- the clock --------------------------------------------------------------------------------


class SkewClock:
    """Stands in for the ``time`` module in the layer's modules: the real monotonic clock plus
    a skew that only grows (``time()`` is derived from it, so the two agree)."""

    def __init__(self) -> None:
        self.skew = 0.0
        self._mono0 = time.monotonic()
        self._wall0 = time.time()

    def monotonic(self) -> float:
        return time.monotonic() + self.skew

    def monotonic_ns(self) -> int:
        return int(self.monotonic() * 1e9)

    def time(self) -> float:
        return self._wall0 + (time.monotonic() - self._mono0) + self.skew

    def time_ns(self) -> int:
        return int(self.time() * 1e9)

    def advance(self, seconds: float) -> None:
        self.skew += seconds

    def __getattr__(self, name: str) -> Any:
        return getattr(time, name)


def layer_modules() -> list[ModuleType]:
    modules: list[ModuleType] = [layer]
    for info in pkgutil.walk_packages(layer.__path__, "layer."):
        if info.name.endswith("__main__"):
            continue
        with contextlib.suppress(ImportError):
            modules.append(importlib.import_module(info.name))
    return modules


def patch_clock(monkeypatch: pytest.MonkeyPatch, clock: SkewClock) -> list[str]:
    """Point every ``layer.*`` module's ``time`` at ``clock``; refuse ``from time import``,
    which this could not reach."""
    patched = []
    for module in layer_modules():
        source = Path(module.__file__ or "")
        if source.suffix == ".py" and "from time import" in source.read_text():
            pytest.fail(f"{source}: 'from time import' escapes the test clock; use time.x()")
        if getattr(module, "time", None) is time:
            monkeypatch.setattr(module, "time", clock)
            patched.append(module.__name__)
    return patched


# -- what each backend documents where the spec leaves room ------------------------------------


def ipc_options() -> dict[str, Any]:
    return {"prefix": f"m{uuid.uuid4().hex[:12]}", "size": IPC_SIZE}


def ipc_after_close(options: dict[str, Any]) -> None:
    from layer.ipc.segment import unlink

    prefix = options["prefix"]
    unlink(prefix)  # close() leaves the segment to other processes; the example is over
    left = shm_objects(prefix)
    assert not left, f"unlinking the IPC layer's prefix left {left} in /dev/shm"


def redis_held(unit: str) -> float:
    """docs/redis.md "Guarantees": a shared channel's receiver holds up to PREFETCH entries
    (plus one a cancelled receive put back); a process's inbox is popped INBOX_BATCH at a time
    and stays armed for ARMED_FOR seconds, so any number of its entries may be held."""
    return math.inf if unit.endswith("!") else PREFETCH + 1


@dataclass(frozen=True)
class Profile:
    skew_clock: bool
    unit_of: Callable[[str], str]
    fanout_shares_entries: bool
    held_after_receive: Callable[[str], float]
    options: Callable[[], dict[str, Any]] = dict
    after_close: Callable[[dict[str, Any]], None] = lambda options: None


def local_options() -> dict[str, Any]:
    return {"ipc": ipc_options()}


def local_after_close(options: dict[str, Any]) -> None:
    ipc_after_close(options["ipc"])


def ipc_held(unit: str) -> float:
    """docs/ipc.md "Taking messages ahead": up to PREFETCH held, plus a cancelled receive's;
    an inbox (docs/ipc.md "Group sends and process-specific channels") is taken in runs until
    the receive's channel gets a message, so any number of its entries may be held for its
    other channels."""
    return math.inf if unit.endswith("!") else PREFETCH + 1


def local_held(unit: str) -> float:
    """Either half's inbox (IPC's or Redis'): any number; IPC's rule for a normal channel,
    plus one message a receive racing both halves may keep (docs/layer.md "Local + Redis")."""
    return math.inf if unit.endswith("!") else PREFETCH + 2


REDIS = Profile(True, per_routing_name, True, redis_held)
PROFILES = {
    "inmemory": Profile(True, per_channel, False, lambda unit: 0),
    # Capacity per inbox for process-specific channels, as Redis (docs/ipc.md "Group sends and
    # process-specific channels").
    "ipc": Profile(True, per_routing_name, True, ipc_held, ipc_options, ipc_after_close),
    "redis": REDIS,
    "redis_acl": REDIS,  # the same layer, as the kit's ACL user (docs/redis.md)
    "redis_sharded": REDIS,
    # Every process-specific name goes to an inbox: this host's IPC one, or a Redis one.
    "local_redis": Profile(
        True, per_routing_name, True, local_held, local_options, local_after_close
    ),
}
# A backend nobody described yet: real time, and the most tolerant reading of every rule.
UNKNOWN = Profile(False, per_routing_name, True, lambda unit: math.inf)


@dataclass
class Tally:
    """What a run did: examples, operations, failures, and how far it pushed the layer."""

    examples: int = 0
    operations: int = 0
    failures: int = 0
    seconds: float = 0.0
    counts: Counter[str] = field(default_factory=Counter)
    peaks: dict[str, int] = field(default_factory=dict)

    def peak(self, key: str, value: int) -> None:
        if value > self.peaks.get(key, 0):
            self.peaks[key] = value

    def add(self, other: Tally) -> None:
        self.examples += other.examples
        self.operations += other.operations
        self.failures += other.failures
        self.seconds += other.seconds
        self.counts.update(other.counts)
        for key, value in other.peaks.items():
            self.peak(key, value)

    def summary(self) -> str:
        return (
            f"{self.examples} examples, {self.operations} operations, {self.failures} failures "
            f"in {self.seconds:.0f} s"
        )

    def reach(self) -> str:
        peaks = ", ".join(f"{k} {v}" for k, v in sorted(self.peaks.items()))
        counts = ", ".join(f"{k} {v}" for k, v in sorted(self.counts.items()))
        return f"peaks: {peaks}\n  counts: {counts}"


# -- the state machine --------------------------------------------------------------------------

Choice = str | int  # a pool name, or an index into the channels new_channel returned


class LayerMachine(RuleBasedStateMachine):
    """One example: a fresh layer and event loop, random operations, the model checking each."""

    factory: ClassVar[LayerFactory]
    profile: ClassVar[Profile]
    clock: ClassVar[SkewClock]
    tally: ClassVar[Tally]

    def __init__(self) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self.layer: BaseChannelLayer | None = None
        self.options: dict[str, Any] = {}
        self.model = SpecModel(Rules(60, 86400, lambda channel: 100))
        self.sizes: dict[int, int] = {}
        self.next_id = 0
        self.new_channels: list[str] = []
        self.names = 0
        self.unstamped: list[Entry] = []  # sent during this step
        self.volume = 0
        self.limited = False
        self.tally.examples += 1

    # -- helpers ----------------------------------------------------------------------------------

    @property
    def lay(self) -> BaseChannelLayer:
        assert self.layer is not None
        return self.layer

    def now(self) -> float:
        return self.clock.monotonic()

    def run(self, coro: Coroutine[Any, Any, T], within: float = 120) -> T:
        return self.loop.run_until_complete(asyncio.wait_for(coro, within))

    def ops(self, n: int = 1) -> None:
        self.tally.operations += n

    def pick(self, choice: Choice) -> str:
        """A channel name: from the pool, one new_channel returned, or a fresh one (no receive
        has taken anything ahead there, so capacity is exact on every backend)."""
        if choice == FRESH:
            return self.fresh("fresh.")
        if choice == FRESH_LOCAL:
            return self.own(self.fresh("fresh") + "!x")
        if isinstance(choice, str):
            return self.own(choice)
        return self.new_channels[choice % len(self.new_channels)] if self.new_channels else "a"

    def own(self, name: str) -> str:
        """``name``, a process-specific one made this client's: only it may receive there."""
        return name.replace("!", f"{self.lay.client_id}!")

    def fresh(self, prefix: str) -> str:
        """A name not used before in this example."""
        self.names += 1
        return f"{prefix}{self.names}"

    def message(self, size: int) -> tuple[int, dict[str, Any]]:
        self.next_id += 1
        self.sizes[self.next_id] = size
        return self.next_id, make_message(self.next_id, size)

    def check_content(self, message: dict[str, Any]) -> int:
        msg_id = message.get("id")
        if not isinstance(msg_id, int) or msg_id not in self.sizes:
            raise Violation(f"received a message that was never sent: {str(message)[:200]}")
        if message != make_message(msg_id, self.sizes[msg_id]):
            raise Violation(f"message {msg_id} arrived changed: {str(message)[:200]}")
        return msg_id

    def room(self, slots_each: int, count: int) -> int:
        """How many of ``count`` messages of ``slots_each`` slots fit the example's volume
        budget (so the IPC segment, sized for it, never fills)."""
        fit = max(0, (VOLUME - self.volume) // slots_each)
        count = min(count, fit)
        self.volume += count * slots_each
        return count

    async def send_one(self, channel: str, size: int, trusted: bool = False) -> None:
        msg_id, message = self.message(size)
        t0 = self.now()
        try:
            if trusted:
                await self.lay.send_trusted(channel, message)
            else:
                await self.lay.send(channel, message)
            accepted = True
        except ChannelFull:
            accepted = False
            self.tally.counts["ChannelFull"] += 1
        t1 = self.now()
        self.model.check_send(channel, accepted, t0, t1)
        if accepted:
            self.unstamped.append(self.model.sent(channel, msg_id, t0, t1))

    def receive_one(self, channel: str, short: float) -> bool:
        """One receive, with a timeout no healthy backend needs when the model says a message
        must come, else ``short``. Checks the outcome; False when it timed out."""
        t0 = self.now()
        long = self.model.expects_message(channel, t0)
        waited = LONG if long else short
        self.ops()
        expired = self.lay.counters.expired
        try:
            message = self.run(asyncio.wait_for(self.lay.receive(channel), waited))
        except TimeoutError:  # a cancellation: it may have put back what it took
            t1 = self.now()
            self.model.timed_out(channel, t1, waited, long)
            self.model.cancelled(channel, t0, t1)
            self.tally.counts["receive timed out"] += 1
            return False
        finally:
            self.tally.peak("expired dropped by one receive", self.lay.counters.expired - expired)
        t1 = self.now()
        self.model.received(channel, self.check_content(message), t0, t1)
        self.tally.counts["received"] += 1
        return True

    def receive_each(self, names: list[str], short: float = 0.02) -> None:
        """One receive on each of the distinct channels ``names``, all at once: those the model
        says must get a message may take up to LONG, the others get ``short`` and are then
        cancelled (a receive handed a message meanwhile puts it back)."""

        async def go() -> None:
            t0 = self.now()
            expected = {name for name in names if self.model.expects_message(name, t0)}
            tasks = {name: asyncio.ensure_future(self.lay.receive(name)) for name in names}
            if expected:
                await asyncio.wait([tasks[name] for name in expected], timeout=LONG)
            await asyncio.wait(tasks.values(), timeout=short)
            for task in tasks.values():
                task.cancel()
            await asyncio.gather(*tasks.values(), return_exceptions=True)
            t1 = self.now()
            for name, task in tasks.items():
                if task.cancelled():
                    self.model.timed_out(name, t1, LONG, name in expected)
                    self.model.cancelled(name, t0, t1)
                    self.tally.counts["receive timed out"] += 1
                else:
                    self.model.received(name, self.check_content(task.result()), t0, t1)
                    self.tally.counts["received"] += 1

        self.ops(len(names))
        self.run(go())

    @invariant()
    def stamp(self) -> None:
        """A send held until the end of the loop turn (IPC's outbox) is stamped when it is
        pushed: as late as the end of the step that sent it, or of the calls before time
        passes in a step."""
        self.model.stamped_by(self.unstamped, self.now())
        self.unstamped.clear()
        self.model.forget_expired(self.now())

    # -- set-up -------------------------------------------------------------------------------------

    @initialize(
        capacity=st.one_of(
            st.sampled_from([1, 2, 5]),
            st.sampled_from([PREFETCH, WINDOW, 100]),
            st.sampled_from([1000, 2 * INBOX_BATCH]),  # a Redis inbox past one pop's batch
        ),
        small=st.integers(1, 3),
        # Long next to the real time an example takes (which the clock also counts), so that
        # "just before" and "just after" an expiry are far apart.
        expiry=st.sampled_from([5.0, 30.0, 60.0]),
        group_expiry=st.sampled_from([10.0, 60.0, 86400.0]),
        limited=st.booleans(),
    )
    def start(
        self, capacity: int, small: int, expiry: float, group_expiry: float, limited: bool
    ) -> None:
        if not self.profile.skew_clock:  # real time: short enough to pass in a test
            expiry, group_expiry = min(expiry, 1.0), min(group_expiry, 2.0)
        self.options = {
            "capacity": capacity,
            "channel_capacity": {"cap.*": small},
            "expiry": expiry,
            "group_expiry": group_expiry,
            **self.profile.options(),
        }
        if limited:
            self.options["max_message_size"] = "256KB"  # above every size in SIZES
        self.limited = limited
        self.layer = type(self).factory(**self.options)
        self.model = SpecModel(
            Rules(
                expiry=expiry,
                group_expiry=group_expiry,
                capacity_of=self.layer.get_capacity,
                unit_of=self.profile.unit_of,
                fanout_shares_entries=self.profile.fanout_shares_entries,
                held_after_receive=self.profile.held_after_receive,
            )
        )

    def teardown(self) -> None:
        try:
            if self.layer is not None:
                self.run(self.lay.flush(), within=60)
                self.run(self.lay.close(), within=60)
        finally:
            # Only a failed rule leaves a task of ours behind; the layer stopped its own.
            left = asyncio.all_tasks(self.loop)
            for task in left:
                task.cancel()
            if left:
                self.loop.run_until_complete(asyncio.wait(left, timeout=10))
            with contextlib.suppress(Exception):
                self.loop.run_until_complete(self.loop.shutdown_asyncgens())
            self.loop.close()
            if self.layer is not None:
                self.profile.after_close(self.options)

    # -- channels -----------------------------------------------------------------------------------

    CHANNEL = st.one_of(
        st.just("a"),
        st.just("proc!a"),
        st.sampled_from(POOL),
        st.integers(0, 1 << 16),
        st.sampled_from([FRESH, FRESH_LOCAL]),
    )
    SIZE = st.sampled_from(sorted(SIZES))

    @rule(
        channels=st.lists(CHANNEL, min_size=1, max_size=3),
        count=COUNTS,
        size=st.one_of(SIZE, st.just("mixed")),
        trusted=st.booleans(),
    )
    def send(self, channels: list[Choice], count: int, size: str, trusted: bool) -> None:
        """A burst to one channel, or round robin over up to three (the IPC outbox flushes a run
        per channel stretch); each send checked against capacity as it returns."""
        names = [self.pick(c) for c in channels]
        kinds = sorted(SIZES)
        plan = [
            (names[i % len(names)], SIZES[kinds[(self.next_id + i) % len(kinds)]])
            if size == "mixed"
            else (names[i % len(names)], SIZES[size])
            for i in range(count)
        ]
        plan = plan[: self.room(max(slots_for(s) for _, s in plan), count)]

        async def burst() -> None:
            for channel, nbytes in plan:
                await self.send_one(channel, nbytes, trusted)

        self.ops(len(plan))
        expired = self.lay.counters.expired
        self.run(burst())
        self.tally.peak("expired dropped by one burst", self.lay.counters.expired - expired)
        self.tally.peak("burst to one channel", -(-len(plan) // len(names)))
        self.tally.peak("slots of one message", max((slots_for(n) for _, n in plan), default=0))
        for name in names:
            self.tally.peak("queued in one channel", len(self.model.queued(name)))
            self.tally.peak(
                "queued in one unit", self.model.unit_count[self.model.rules.unit_of(name)]
            )

    @rule(
        channel=CHANNEL,
        count=COUNTS,
        size=SIZE,
        over=st.sampled_from([0.5, 0.9, 1.1, 2.0]),
        then=st.sampled_from(["send", "group_send", "receive"]),
    )
    def expire_in_queue(
        self, channel: Choice, count: int, size: str, over: float, then: str
    ) -> None:
        """A burst, ``over`` x ``expiry`` passing, then one more message (sent, or group-sent to
        the channel as its only member) or none, and the channel drained: dozens to hundreds
        of expired messages at the head of one queue, as behind a worker busy for a minute
        (issue 18)."""
        name = self.pick(channel)
        self.send([name], count, size, False)
        self.time_passes("expiry", over)
        if then == "group_send":
            group = self.fresh("exp.")
            self.ops()
            t0 = self.now()
            self.run(self.lay.group_add(group, name))
            self.model.group_add(group, name, t0, self.now())
            self.group_send(group, "tiny", 1)
            self.run(self.lay.group_discard(group, name))
            self.model.group_discard(group, name)
        elif then == "send":
            self.send([name], 1, "tiny", False)
        self.drain(name)

    @rule(
        channel=CHANNEL, n=st.one_of(st.just(1), st.integers(1, 40)), short=st.sampled_from(SHORT)
    )
    def receive(self, channel: Choice, n: int, short: float) -> None:
        name = self.pick(channel)
        for _ in range(n):
            if not self.receive_one(name, short):
                break

    @rule(channel=CHANNEL)
    def drain(self, channel: Choice) -> None:
        name = self.pick(channel)
        for n in range(2000):
            if not self.receive_one(name, 0.02):
                self.tally.peak("drained from one channel", n)
                break

    @rule(
        channel=CHANNEL,
        before=st.integers(0, 3),
        sends=st.integers(0, 3),
        after=st.integers(0, 3),
        size=SIZE,
    )
    def receive_cancelled(
        self, channel: Choice, before: int, sends: int, after: int, size: str
    ) -> None:
        """A receive cancelled after some loop turns, maybe after sends that it may already
        have been handed one of: whatever it took goes back to the front (docs/layer.md), which
        the next receive checks."""
        name = self.pick(channel)
        sends = self.room(slots_for(SIZES[size]), sends)
        self.model.received_units.add(self.model.rules.unit_of(name))

        async def go() -> str:
            t0 = self.now()
            task = asyncio.ensure_future(self.lay.receive(name))
            for _ in range(before):
                await asyncio.sleep(0)
            if task.done():  # it returned before the sends: check it first
                self.model.received(name, self.check_content(task.result()), t0, self.now())
                for _ in range(sends):
                    await self.send_one(name, SIZES[size])
                return "returned at once"
            unit = self.model.rules.unit_of(name)
            self.model.pending[unit] += 1  # it may take one of them, or an earlier message
            try:
                for _ in range(sends):
                    await self.send_one(name, SIZES[size])
            finally:
                self.model.pending[unit] -= 1
            for _ in range(after):
                await asyncio.sleep(0)
            task.cancel()
            try:
                message = await task
            except asyncio.CancelledError:
                self.model.cancelled(name, t0, self.now())
                return "put back"
            self.model.received(name, self.check_content(message), t0, self.now())
            return "got one"

        self.ops(1 + sends)
        self.tally.counts["cancelled receive " + self.run(go())] += 1
        self.receive_one(name, 0.02)

    @rule(
        k=st.one_of(st.integers(1, 4), st.integers(5, 100)),
        local=st.booleans(),
        lapse=st.sampled_from([0.5, 0.9, 1.1, 2.0]),
        renew=st.floats(0, 1),
    )
    def group_lapses(self, k: int, local: bool, lapse: float, renew: float) -> None:
        """Members added, ``lapse`` x ``group_expiry`` passing, a share of them added again
        (which renews them), a group_send, and one receive on every member: only members whose
        membership had not lapsed get it."""
        k = self.room(1, k)
        if not k:
            return
        group = self.fresh("lapse.")
        names = (
            [self.run(self.lay.new_channel("lapse")) for _ in range(k)]
            if local
            else [self.fresh("lapse.") for _ in range(k)]
        )

        async def add(members: list[str]) -> None:
            for name in members:
                t0 = self.now()
                await self.lay.group_add(group, name)
                self.model.group_add(group, name, t0, self.now())

        self.ops(k)
        self.run(add(names))
        self.time_passes("group_expiry", lapse)
        renewed = names[: round(k * renew)]
        self.ops(len(renewed))
        self.run(add(renewed))
        self.group_send(group, "tiny", 1)
        self.receive_each(names)
        self.group_discard(group, "", True)  # keeps the IPC entry pool from filling up

    @rule(receivers=st.integers(2, 8), fraction=st.floats(0.1, 1.0), local=st.booleans())
    def concurrent_receivers(self, receivers: int, fraction: float, local: bool) -> None:
        """Receivers waiting on one fresh channel at once get distinct messages, each once."""
        name = self.run(self.lay.new_channel("conc")) if local else self.fresh("conc.")
        t0 = self.now()
        unit = self.model.rules.unit_of(name)
        free = self.model.rules.capacity_of(name) - self.model.unit_count[unit]
        n = self.room(1, min(free, max(1, round(receivers * fraction))))
        if n < 1:
            return
        self.model.received_units.add(unit)

        async def go() -> list[dict[str, Any]]:
            tasks = [asyncio.ensure_future(self.lay.receive(name)) for _ in range(receivers)]
            await asyncio.sleep(0)
            for _ in range(n):
                await self.send_one(name, SIZES["tiny"])
            pending = set(tasks)
            deadline = self.loop.time() + LONG
            while len(pending) > receivers - n and self.loop.time() < deadline:
                _, pending = await asyncio.wait(
                    pending, timeout=deadline - self.loop.time(), return_when="FIRST_COMPLETED"
                )
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
            return [t.result() for t in tasks if not t.cancelled()]

        self.ops(receivers + n)
        self.tally.peak("receivers on one channel", receivers)
        got = self.run(go())
        t1 = self.now()
        ids = sorted(self.check_content(m) for m in got)
        sent = [e.msg_id for e in self.model.queued(name)]
        if ids != sent:
            raise Violation(f"{receivers} receivers on {name!r} got {ids} of {sent}")
        for msg_id in ids:
            self.model.received(name, msg_id, t0, t1)

    @rule(
        k=st.one_of(st.integers(1, 8), st.sampled_from([RING - 1, RING, RING + 1, 2 * RING + 2])),
        local=st.booleans(),
        size=SIZE,
    )
    def waiting_members_get_a_group_send(self, k: int, local: bool, size: str) -> None:
        """``k`` receives wait on ``k`` fresh channels of one group; one group_send wakes them
        all (more than the IPC wake ring holds: it overflows and is recovered)."""
        k = self.room(slots_for(SIZES[size]), k)
        if not k:
            return
        group = self.fresh("wait.")

        async def go() -> tuple[float, float, list[str], list[dict[str, Any]], int]:
            if local:
                names = [await self.lay.new_channel("wait") for _ in range(k)]
            else:
                names = [self.fresh("wait.") for _ in range(k)]
            for name in names:
                t0 = self.now()
                await self.lay.group_add(group, name)
                self.model.group_add(group, name, t0, self.now())
                self.model.received_units.add(self.model.rules.unit_of(name))
            tasks = [asyncio.ensure_future(self.lay.receive(name)) for name in names]
            await asyncio.sleep(0)
            msg_id, message = self.message(SIZES[size])
            t0 = self.now()
            await self.lay.group_send(group, message)
            t1 = self.now()
            self.model.group_sent(group, msg_id, t0, t1)
            got = await asyncio.wait_for(asyncio.gather(*tasks), LONG)
            for name in names:
                await self.lay.group_discard(group, name)
                self.model.group_discard(group, name)
            return t0, self.now(), names, got, msg_id

        self.ops(3 * k + 1)
        self.tally.peak("receivers woken by one group send", k)
        t0, t1, names, got, msg_id = self.run(go())
        for name, message in zip(names, got, strict=True):
            if self.check_content(message) != msg_id:
                raise Violation(f"{name!r} waited for group message {msg_id}, got {message['id']}")
            self.model.received(name, msg_id, t0, t1)

    @rule(prefix=st.sampled_from(["specific", "http.response", "p"]))
    def new_channel(self, prefix: str) -> None:
        self.ops()
        name = self.run(self.lay.new_channel(prefix))
        assert name.startswith(f"{prefix}.") and name.count("!") == 1, name
        assert name not in self.new_channels, f"new_channel returned {name!r} twice"
        self.new_channels.append(name)

    # -- groups -------------------------------------------------------------------------------------

    GROUP = st.one_of(st.just("g"), st.sampled_from(GROUPS))

    @rule(group=GROUP, channel=CHANNEL)
    def group_add(self, group: str, channel: Choice) -> None:
        name = self.pick(channel)
        self.ops()
        t0 = self.now()
        self.run(self.lay.group_add(group, name))
        self.model.group_add(group, name, t0, self.now())

    @rule(
        group=GROUP,
        k=st.one_of(st.integers(2, 40), st.integers(41, BIG_GROUP)),
        local=st.sampled_from(["shared", "local", "both"]),
    )
    def group_add_many(self, group: str, k: int, local: str) -> None:
        """Hundreds of members: shared channels (one list each on Redis, one plan field each)
        and one process's channels (one inbox list, one fan-out entry for all)."""
        names = {
            "shared": [f"gm.{i}" for i in range(k)],
            "local": [f"gx!{i}" for i in range(k)],
            "both": [f"gm.{i}" if i % 2 else f"gx!{i}" for i in range(k)],
        }[local]

        async def go() -> None:
            for name in names:
                t0 = self.now()
                await self.lay.group_add(group, name)
                self.model.group_add(group, name, t0, self.now())

        self.ops(k)
        self.run(go())

    @rule(group=GROUP, channel=CHANNEL, all_members=st.booleans())
    def group_discard(self, group: str, channel: Choice, all_members: bool) -> None:
        names = list(self.model.members(group)) if all_members else [self.pick(channel)]

        async def go() -> None:
            for name in names:
                await self.lay.group_discard(group, name)
                self.model.group_discard(group, name)

        self.ops(len(names))
        self.run(go())

    @rule(group=GROUP, size=SIZE, times=st.integers(1, 3))
    def group_send(self, group: str, size: str, times: int) -> None:
        """Never raises ChannelFull: full members are skipped (maybe: the model marks a member
        whose room or membership it cannot tell as optional)."""
        members = len(self.model.members(group))
        self.tally.peak("members of one group send", members)
        for _ in range(times):
            if members and self.room(slots_for(SIZES[size]) * members, 1) < 1:
                return
            msg_id, message = self.message(SIZES[size])
            self.ops()
            t0 = self.now()
            expired = self.lay.counters.expired
            self.run(self.lay.group_send(group, message))
            added = self.model.group_sent(group, msg_id, t0, self.now())
            self.tally.counts["optional group deliveries"] += sum(e.optional for e in added)
            self.tally.peak(
                "expired dropped by one group send", self.lay.counters.expired - expired
            )

    # -- the rest -----------------------------------------------------------------------------------

    @rule()
    def flush(self) -> None:
        self.ops()
        self.run(self.lay.flush())
        self.model.flush()
        self.volume = 0

    @rule(
        of=st.sampled_from(["expiry", "group_expiry", "seconds"]),
        # Never exactly 1.0: the real time the calls took would decide which side it lands.
        fraction=st.sampled_from([0.001, 0.1, 0.5, 0.9, 1.1, 1.5, 3.0]),
    )
    def time_passes(self, of: str, fraction: float) -> None:
        rules = self.model.rules
        base = {"expiry": rules.expiry, "group_expiry": rules.group_expiry, "seconds": 1.0}[of]
        seconds = base * fraction
        self.stamp()
        if self.profile.skew_clock:
            self.clock.advance(seconds)
        else:
            self.run(asyncio.sleep(min(seconds, 3.0)))
        self.model.forget_expired(self.now())

    @rule()
    def stats(self) -> None:
        self.ops()
        stats = self.run(self.lay.stats())
        for key in ("sent", "received", "dropped_full", "expired", "group_sends", "queued"):
            assert isinstance(stats[key], int) and stats[key] >= 0, (key, stats)

    @precondition(lambda self: self.limited)
    @rule(group=GROUP, channel=CHANNEL)
    def too_large(self, group: str, channel: Choice) -> None:
        """MessageTooLarge from send and group_send; nothing is stored."""
        name = self.pick(channel)
        message = make_message(0, 300_000)
        self.ops(2)
        with pytest.raises(MessageTooLarge):
            self.run(self.lay.send(name, message))
        with pytest.raises(MessageTooLarge):
            self.run(self.lay.group_send(group, message))

    @rule(name=st.sampled_from(["", "a!b!c", "x" * 100, "sp ace", "héllo"]))
    def invalid_name(self, name: str) -> None:
        self.ops(2)
        with pytest.raises(InvalidName):
            self.run(self.lay.send(name, {"type": "never"}))
        with pytest.raises(InvalidName):
            self.run(self.lay.receive(name))


# -- running it ----------------------------------------------------------------------------------

SUPPRESS = [HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much]
settings.register_profile(
    "layer-model",  # make test: bounded, and the same examples every run
    max_examples=12,
    stateful_step_count=30,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=SUPPRESS,
    print_blob=True,
)
settings.register_profile(
    "layer-model-soak",  # make soak: fresh random examples, longer sequences, batch by batch
    max_examples=20,
    stateful_step_count=60,
    deadline=None,
    database=None,
    suppress_health_check=SUPPRESS,
    print_blob=True,
    phases=[Phase.generate, Phase.shrink],
)
MAX_EXAMPLES = {
    "inmemory": 200,
    "ipc": 120,
    "redis": 60,
    "redis_acl": 30,
    "redis_sharded": 50,
    "local_redis": 60,
}
SOAK_TOTAL = Tally()


def say(request: pytest.FixtureRequest, line: str) -> None:
    """Print ``line`` now, past pytest's output capture."""
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    with capture.global_and_fixture_disabled() if capture else contextlib.nullcontext():
        print(line, file=sys.stderr, flush=True)


@pytest.mark.timeout(1800 + 2 * SOAK_SECONDS)  # a failure's shrinking takes minutes
@pytest.mark.parametrize("backend", BACKENDS)
def test_model(
    backend: str, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> None:
    factory: LayerFactory = request.getfixturevalue(f"{backend}_layer_factory")
    profile = PROFILES.get(backend, UNKNOWN)
    clock = SkewClock()
    if profile.skew_clock:
        patch_clock(monkeypatch, clock)
    tally = Tally()
    machine = type(
        f"LayerMachine_{backend}",
        (LayerMachine,),
        {"factory": staticmethod(factory), "profile": profile, "clock": clock, "tally": tally},
    )
    started = time.monotonic()
    if not SOAK_SECONDS:
        ci = settings.get_profile("layer-model")
        run_state_machine_as_test(
            machine, settings=settings(ci, max_examples=MAX_EXAMPLES.get(backend, 10))
        )
        tally.seconds = time.monotonic() - started
        if request.config.get_verbosity() > 0:
            say(request, f"model [{backend}]: {tally.summary()}\n  {tally.reach()}")
        return
    budget = SOAK_SECONDS / len(BACKENDS)
    soak = settings.get_profile("layer-model-soak")
    failure: BaseException | None = None
    while time.monotonic() - started < budget and failure is None:
        try:
            run_state_machine_as_test(machine, settings=soak)
        except BaseException as exc:  # a falsified (and shrunk) example: report, then fail
            tally.failures += 1
            failure = exc
    tally.seconds = time.monotonic() - started
    SOAK_TOTAL.add(tally)
    say(request, f"model soak [{backend}]: {tally.summary()}\n  {tally.reach()}")
    if failure is not None:
        raise failure


@pytest.mark.skipif(not SOAK_SECONDS, reason="LAYER_SOAK_SECONDS is not set (make soak)")
def test_model_soak_summary(request: pytest.FixtureRequest) -> None:
    say(request, f"model soak [all backends]: {SOAK_TOTAL.summary()}")


def test_message_sizes_are_exact() -> None:
    """The size classes hit the slot boundaries they are named after."""
    for msg_id in (1, 127, 128, 65535, 70000, 10**9):
        for name, size in SIZES.items():
            assert len(encode(make_message(msg_id, size))) == size, (name, msg_id)
    assert extents_of(SIZES["one_slot"]) == (0,) and extents_of(SIZES["two_slots"]) == (1,)
    assert extents_of(SIZES["one_extent"]) == (2,) and extents_of(SIZES["next_order"]) == (3,)
    assert extents_of(SIZES["large"]) == (7,) and len(extents_of(SIZES["extents"])) > 1
    assert JOURNAL_RECORDS == 152
    assert COUNTS_UP_TO * SIZES["large"] > _HIGH_WATER  # a burst can congest a Redis pipe


# -- what the model found --------------------------------------------------------------------


async def test_group_send_while_a_sweep_drops_lapsed_members(layer_factory: LayerFactory) -> None:
    """The in-memory group_send raised KeyError when a member's push ran the periodic sweep,
    which dropped a lapsed member the send was about to drop itself."""
    channel_layer = layer_factory(expiry=0.1, group_expiry=0.2)
    await channel_layer.group_add("g", "live")
    await channel_layer.group_add("g", "lapsed")
    await asyncio.sleep(0.3)  # both lapse; the in-memory sweep is due
    await channel_layer.group_add("g", "live")  # renewed, and still first in the group
    await channel_layer.group_send("g", {"type": "x"})
    assert (await asyncio.wait_for(channel_layer.receive("live"), 2))["type"] == "x"
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(channel_layer.receive("lapsed"), 0.1)
