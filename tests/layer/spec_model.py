"""A plain-Python reference model of the channel-layer spec (docs/layer.md), for the
model-based test in ``tests/layer/test_model.py``.

The model knows what a single process making sequential, awaited calls may observe. Time is
never a point but an interval: every call is bracketed by two clock readings ``(t0, t1)``, so a
message sent in ``[t0, t1]`` expires somewhere in ``[t0 + expiry, t1 + expiry]`` and the model
only asserts what holds for every instant in those intervals. Everything else it must tolerate
is a documented rule of a backend, described by :class:`Rules`:

* **Capacity units.** Capacity is counted per channel, except where a backend stores several
  channels in one list (Redis: every ``name!...`` channel of a process is one inbox list,
  docs/redis.md "Layout in Redis"); there one group fan-out entry carries all the members of
  that list (docs/redis.md "How it is fast") and counts once.
* **Messages held by this process** (take-ahead, PREFETCH in layer/flow.py; docs/ipc.md "Taking
  messages ahead", docs/redis.md "Guarantees") have left the storage, so they no longer count
  against capacity: after a receive on a unit, a send may succeed although the unit already
  holds ``capacity`` messages, by up to the number the backend may hold. A receive still
  pending during a send may have been handed a message too (``pending``).
* **Held sends** (IPC's outbox, docs/ipc.md "Held sends") are stamped when they are pushed, at
  the end of the loop turn: the caller widens their expiry to the end of the step
  (:meth:`SpecModel.stamped_by`).
* **A cancelled receive** puts the message it took back at the front (docs/layer.md
  "Delivery") with a fresh expiry (layer/inmemory.py ``_requeue``, layer/redis/mailboxes.py
  ``give(front=True)``, layer/ipc/layer.py ``_give_back``): the model widens that message's
  expiry interval instead of guessing which receive took it.
* **Uncertain outcomes** (a group member whose membership may have lapsed, a member whose
  channel may or may not be full) make the message *optional*: it may be delivered or not, but
  never out of order, never twice, never after it certainly expired.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

from layer.names import non_local_name

Outcome = Literal["accept", "reject", "either"]

# Clock tolerance: Redis stamps expiries in whole milliseconds (int() of seconds * 1000).
SLACK = 0.005


class Violation(AssertionError):
    """The backend did something the spec (as modelled) does not allow."""


@dataclass
class Entry:
    """One message the model believes may be queued on ``channel``."""

    ident: int  # the model's own number, growing with every entry (storage order)
    msg_id: int  # the "id" in the message (one group send gives every member the same)
    channel: str
    unit: str
    expires_lo: float  # it certainly has not expired before this instant
    expires_hi: float  # it has certainly expired at or after this instant
    optional: bool  # the backend may never have stored it
    store_id: int  # the storage entry holding it (one fan-out entry may hold several)

    def certainly_expired(self, at: float) -> bool:
        return self.expires_hi <= at

    def certainly_alive(self, at: float) -> bool:
        return self.expires_lo > at

    def describe(self) -> str:
        kind = "optional " if self.optional else ""
        return (
            f"{kind}message {self.msg_id} on {self.channel!r} "
            f"(expires in [{self.expires_lo:.3f}, {self.expires_hi:.3f}])"
        )


@dataclass
class Membership:
    lapses_lo: float
    lapses_hi: float


@dataclass(frozen=True)
class Rules:
    """What one backend is documented to do where the spec leaves room."""

    expiry: float
    group_expiry: float
    capacity_of: Callable[[str], int]  # the layer's own get_capacity
    unit_of: Callable[[str], str] = lambda channel: channel
    fanout_shares_entries: bool = False  # one storage entry per unit for a group send
    held_after_receive: Callable[[str], float] = lambda unit: 0  # messages of a unit it may hold


def per_channel(channel: str) -> str:
    return channel


def per_routing_name(channel: str) -> str:
    return non_local_name(channel)


@dataclass
class SpecModel:
    rules: Rules
    queues: dict[str, list[Entry]] = field(default_factory=dict)
    groups: dict[str, dict[str, Membership]] = field(default_factory=dict)
    unit_channels: defaultdict[str, set[str]] = field(default_factory=lambda: defaultdict(set))
    unit_count: defaultdict[str, int] = field(default_factory=lambda: defaultdict(int))
    received_units: set[str] = field(default_factory=set)
    pending: defaultdict[str, int] = field(default_factory=lambda: defaultdict(int))
    gone: dict[tuple[str, int], str] = field(default_factory=dict)  # why it can't come again
    _entries: int = 0
    _store_ids: int = 0

    # -- bookkeeping ---------------------------------------------------------------------------

    def _entry(self, msg_id: int, channel: str, t0: float, t1: float, optional: bool) -> Entry:
        self._entries += 1
        expiry = self.rules.expiry
        unit = self.rules.unit_of(channel)
        return Entry(
            self._entries, msg_id, channel, unit, t0 + expiry - SLACK, t1 + expiry + SLACK,
            optional, 0,
        )  # fmt: skip

    def _new_store_id(self) -> int:
        self._store_ids += 1
        return self._store_ids

    def _append(self, entry: Entry) -> None:
        self.queues.setdefault(entry.channel, []).append(entry)
        self.unit_channels[entry.unit].add(entry.channel)
        self.unit_count[entry.unit] += 1

    def _remove_front(self, channel: str, n: int, why: str) -> None:
        queue = self.queues[channel]
        for entry in queue[:n]:
            self.unit_count[entry.unit] -= 1
            self.gone[channel, entry.msg_id] = why
        del queue[:n]
        if not queue:
            del self.queues[channel]

    def queued(self, channel: str) -> list[Entry]:
        return self.queues.get(channel, [])

    def total(self) -> int:
        return sum(self.unit_count.values())

    def _unit_entries(self, unit: str) -> list[Entry]:
        """The unit's entries in storage order: its channels' queues merged by entry number
        (which grows with every send; a requeued message keeps its place at the front)."""
        channels = [c for c in self.unit_channels.get(unit, ()) if c in self.queues]
        if len(channels) == 1:
            return list(self.queues[channels[0]])
        merged = [e for c in channels for e in self.queues[c]]
        merged.sort(key=lambda e: e.ident)
        return merged

    def held_max(self, unit: str) -> float:
        """How many of ``unit``'s messages may be out of storage but not yet received: taken
        ahead, or handed to a receive still pending (``pending``, kept by the caller)."""
        ahead = self.rules.held_after_receive(unit) if unit in self.received_units else 0
        return ahead + self.pending[unit]

    # -- sends -----------------------------------------------------------------------------------

    def send_outcome(self, channel: str, t0: float, t1: float) -> Outcome:
        """Whether a send to ``channel`` in ``[t0, t1]`` must be accepted, must raise
        ``ChannelFull`` or may do either."""
        unit = self.rules.unit_of(channel)
        capacity = self.rules.capacity_of(channel)
        if self.unit_count[unit] < capacity:
            return "accept"
        entries = self._unit_entries(unit)
        # A full channel first drops its expired head (every backend: in-memory _prune, IPC
        # _drop_expired, Redis room()): a certainly expired prefix is certainly gone.
        prefix = 0
        for entry in entries:
            if not entry.certainly_expired(t0):
                break
            prefix += 1
        if len(entries) - prefix < capacity:
            return "accept"
        certain = {e.store_id for e in entries if not e.optional and e.certainly_alive(t1)}
        if len(certain) - self.held_max(unit) >= capacity:
            return "reject"
        return "either"

    def check_send(self, channel: str, accepted: bool, t0: float, t1: float) -> None:
        """A send to ``channel`` in ``[t0, t1]`` was accepted (or raised ``ChannelFull``):
        check that against the state before it (call before :meth:`sent`)."""
        outcome = self.send_outcome(channel, t0, t1)
        unit = self.rules.unit_of(channel)
        state = (
            f"{self.unit_count[unit]} queued in {unit!r} (capacity "
            f"{self.rules.capacity_of(channel)}, at most {self.held_max(unit)} held)"
        )
        if accepted and outcome == "reject":
            raise Violation(f"send to {channel!r} was accepted past capacity: {state}")
        if not accepted and outcome == "accept":
            raise Violation(f"send to {channel!r} raised ChannelFull with room left: {state}")

    def sent(self, channel: str, msg_id: int, t0: float, t1: float) -> Entry:
        entry = self._entry(msg_id, channel, t0, t1, optional=False)
        entry.store_id = self._new_store_id()
        self._append(entry)
        return entry

    def stamped_by(self, entries: list[Entry], t1: float) -> None:
        """``entries`` may have been stamped as late as ``t1``: a backend holding sends until
        the end of the loop turn (IPC's outbox) stamps their expiry when it pushes them."""
        for entry in entries:
            entry.expires_hi = max(entry.expires_hi, t1 + self.rules.expiry + SLACK)

    # -- groups ----------------------------------------------------------------------------------

    def group_add(self, group: str, channel: str, t0: float, t1: float) -> None:
        ge = self.rules.group_expiry
        self.groups.setdefault(group, {})[channel] = Membership(t0 + ge - SLACK, t1 + ge + SLACK)

    def group_discard(self, group: str, channel: str) -> None:
        members = self.groups.get(group)
        if members is not None:
            members.pop(channel, None)
            if not members:
                del self.groups[group]

    def members(self, group: str) -> dict[str, Membership]:
        return self.groups.get(group, {})

    def group_sent(self, group: str, msg_id: int, t0: float, t1: float) -> list[Entry]:
        """``group_send`` of message ``msg_id`` in ``[t0, t1]`` returned: what each member may
        have got (call with the state before it)."""
        members = self.groups.get(group, {})
        for channel, member in list(members.items()):
            if member.lapses_hi <= t0:  # lapsed for certain: gone from the group
                del members[channel]
        if not members:
            self.groups.pop(group, None)
            return []
        by_unit: dict[str, list[str]] = defaultdict(list)
        for channel in members:
            by_unit[self.rules.unit_of(channel)].append(channel)
        # Every decision is made against the state before the send: a member's push never
        # changes another unit's room, and members sharing a unit share one entry and check.
        plans: list[tuple[list[str], Outcome, int]] = []
        for channels in by_unit.values():
            if self.rules.fanout_shares_entries:
                outcome = self.send_outcome(channels[0], t0, t1)
                plans.append((channels, outcome, self._new_store_id()))
            else:
                plans += [
                    ([c], self.send_outcome(c, t0, t1), self._new_store_id()) for c in channels
                ]
        added: list[Entry] = []
        for channels, outcome, store_id in plans:
            if outcome == "reject":
                continue
            for channel in channels:
                lapses = members[channel].lapses_lo
                optional = outcome != "accept" or not lapses > t1
                entry = self._entry(msg_id, channel, t0, t1, optional)
                entry.store_id = store_id
                self._append(entry)
                added.append(entry)
        return added

    # -- receives --------------------------------------------------------------------------------

    def expects_message(self, channel: str, at: float) -> bool:
        """Whether a receive starting at ``at`` must return a message (something is certainly
        queued and unexpired)."""
        return any(not e.optional and e.certainly_alive(at) for e in self.queued(channel))

    def received(self, channel: str, msg_id: int, t0: float, t1: float) -> Entry:
        """A receive on ``channel`` in ``[t0, t1]`` returned message ``msg_id``."""
        self.received_units.add(self.rules.unit_of(channel))
        queue = self.queued(channel)
        index = next((i for i, e in enumerate(queue) if e.msg_id == msg_id), None)
        if index is None:
            elsewhere = [c for c, q in self.queues.items() if any(e.msg_id == msg_id for e in q)]
            why = self.gone.get((channel, msg_id), "")
            what = (
                "delivered twice"
                if why == "received"
                else "resurrected by a flush"
                if why == "flushed"
                else f"delivered after it expired ({why})"
                if why.startswith("expired")
                else "delivered after a later message (out of order) or after it expired"
                if why
                else f"delivered on the wrong channel (sent to {elsewhere})"
                if elsewhere
                else "never sent to it"
            )
            raise Violation(f"receive({channel!r}) returned message {msg_id}: {what}")
        for entry in queue[:index]:
            if not entry.optional and not entry.expires_lo <= t1:
                raise Violation(
                    f"receive({channel!r}) returned message {msg_id} but skipped "
                    f"{entry.describe()}, which had not expired (lost or out of order)"
                )
        got = queue[index]
        if got.certainly_expired(t0):
            raise Violation(
                f"receive({channel!r}) in [{t0:.3f}, {t1:.3f}] returned {got.describe()}, "
                "which had expired"
            )
        self._remove_front(channel, index, "skipped")
        self._remove_front(channel, 1, "received")
        return got

    def timed_out(self, channel: str, t1: float, waited: float, long: bool) -> None:
        """A receive on ``channel`` ending at ``t1`` returned nothing within ``waited`` s
        (``long``: a wait no healthy backend needs to deliver a queued message)."""
        self.received_units.add(self.rules.unit_of(channel))
        if not long:
            return
        for entry in self.queued(channel):
            if not entry.optional and entry.certainly_alive(t1):
                raise Violation(
                    f"receive({channel!r}) waited {waited}s and got nothing although "
                    f"{entry.describe()} was queued (lost)"
                )

    def cancelled(self, channel: str, t0: float, t1: float) -> None:
        """A receive on ``channel`` in ``[t0, t1]`` was cancelled: it may have taken the first
        deliverable message and put it back at the front with a fresh expiry."""
        self.received_units.add(self.rules.unit_of(channel))
        for entry in self.queued(channel):
            if entry.certainly_expired(t0):
                continue
            entry.expires_hi = max(entry.expires_hi, t1 + self.rules.expiry + SLACK)
            if not entry.optional:
                break

    # -- flush and housekeeping ------------------------------------------------------------------

    def flush(self) -> None:
        for channel in list(self.queues):
            self._remove_front(channel, len(self.queues[channel]), "flushed")
        self.groups.clear()
        self.unit_channels.clear()

    def forget_expired(self, at: float) -> None:
        """Drop entries that certainly expired at the head of their unit: nothing may return
        them and no capacity decision counts them. Keeps the model small."""
        for unit in list(self.unit_channels):
            for entry in self._unit_entries(unit):
                if not entry.certainly_expired(at):
                    break
                assert self.queues[entry.channel][0] is entry
                self._remove_front(entry.channel, 1, f"expired (by {at:.3f})")
            left = {c for c in self.unit_channels[unit] if c in self.queues}
            if left:
                self.unit_channels[unit] = left
            else:
                del self.unit_channels[unit]
