"""One seam for tests and debugging: a snapshot of what an IPC layer instance holds, and its
parts for the tests that drive them (crash injection, journal rollback, the allocator model).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from layer.ipc.layout import RECOVERIES, U32, Geometry

if TYPE_CHECKING:
    from layer.ipc.ahead import TakeAhead
    from layer.ipc.doorbell import Ringer
    from layer.ipc.journal import Lock
    from layer.ipc.outbox import Outbox
    from layer.ipc.receivers import Receivers
    from layer.ipc.registry import Registry
    from layer.ipc.segment import Segment
    from layer.ipc.storage import Storage


@dataclass(frozen=True)
class Parts:
    """The parts an ``IPCChannelLayer`` owns."""

    segment: Segment
    storage: Storage
    lock: Lock
    registry: Registry
    receivers: Receivers
    ringer: Ringer
    ahead: TakeAhead
    outbox: Outbox


@dataclass(frozen=True)
class DebugState:
    """A snapshot of one instance and its segment (read under the instance's mutex only, so
    it works on a segment whose journal is corrupt; quiescent tests read it consistently)."""

    geometry: Geometry
    created: bool  # this instance's attach wrote the empty segment
    waker: int  # its record in the registry
    epoch: int  # the segment's flush epoch
    queued: int  # messages in the segment (not counting those held here)
    channels: int  # channels with messages or waiters
    groups: int
    free_slots: int
    recoveries: int  # repairs of a dead holder's mutation by this instance's lock
    segment_recoveries: int  # ... by any instance's
    held: dict[str, int]  # messages taken ahead, per channel
    malformed: int  # inbox entries no layer wrote, dropped (inbox.py)
    returning: bool  # the thread sending back shared channels' held messages runs
    outbox: int  # sends held for the next flush
    parked: dict[str, int]  # receives waiting, per channel
    deferred: bool  # chimes left in the doorbell for the next loop turn
    spinning: bool  # polling its wake ring (senders skip its doorbell)
    ringing: frozenset[int]  # records this instance has a doorbell open to


def debug_state(parts: Parts) -> DebugState:
    storage, receivers, ahead = parts.storage, parts.receivers, parts.ahead
    with parts.lock.mutex:
        queued, channels, groups = storage.counts()
        return DebugState(
            geometry=storage.geometry,
            created=parts.segment.initialised,
            waker=receivers.waker,
            epoch=storage.epoch(),
            queued=queued,
            channels=channels,
            groups=groups,
            free_slots=storage.blocks.free_slots(),
            recoveries=parts.lock.recoveries,
            segment_recoveries=int(U32.unpack_from(storage.mm, RECOVERIES)[0]),
            held={channel: len(items) for channel, items in ahead.held.items()},
            malformed=receivers.inboxes.malformed,
            returning=ahead.returning(),
            outbox=len(parts.outbox.items),
            parked={c: sum(not f.done() for f in fs) for c, fs in receivers.local.items()},
            deferred=receivers.deferred,
            spinning=parts.registry.spinning(receivers.waker),
            ringing=frozenset(parts.ringer.fds),
        )
