"""``IPCChannelLayer``: the base's storage over one POSIX shared-memory segment per prefix.

Every operation is one short critical section under the segment lock (no ``await`` inside, so
it is atomic for the event loop too). A receive that finds its channel empty waits on a future
(``receivers.py``: waiter nodes, the doorbell, delivery); a send coalesced behind another waits in
the outbox for the end of the loop turn (``outbox.py``). A receive may take up to 32 messages
ahead in its critical section (``ahead.py``), which later receives here get without the lock.
The layer owns its parts (segment, storage, lock, registry record, receivers, outbox, take-ahead)
and keeps each part its hot paths call one attribute away.
"""

from __future__ import annotations

import asyncio
import time
from threading import get_ident
from typing import Any

from layer.base import BaseChannelLayer, StorageCounts
from layer.exceptions import ChannelFull, InvalidOption
from layer.flow import handed, remember
from layer.ipc import segment, storage
from layer.ipc.ahead import TakeAhead
from layer.ipc.debug import DebugState, Parts, debug_state
from layer.ipc.doorbell import Doorbell, Ringer, Wakes
from layer.ipc.extents import largest_payload
from layer.ipc.inbox import Route, inbox_of, route
from layer.ipc.journal import Journal, Lock
from layer.ipc.layout import NIL
from layer.ipc.outbox import Outbox
from layer.ipc.receivers import SPIN, Receivers
from layer.ipc.registry import Registry
from layer.ipc.sizing import sizing
from layer.ipc.table import Keys
from layer.messages import Message
from layer.options import byte_size, non_negative_number, positive_int

_ROUTES = 8192  # channels whose route (queue, key, head) is remembered


class IPCChannelLayer(BaseChannelLayer):
    """Channel layer shared by the processes of one host through ``/dev/shm``."""

    def __init__(
        self,
        *,
        prefix: str = "kit",
        size: int | str = "256MB",
        slot_size: int = 256,
        group_access: bool = False,
        spin: float = SPIN,
        **options: Any,
    ) -> None:
        super().__init__(**options)
        self.prefix = segment.check_prefix(prefix)
        self.size = byte_size("size", size)
        self.slot_size = positive_int("slot_size", slot_size)
        if self.slot_size & (self.slot_size - 1) or not 64 <= self.slot_size <= 65536:
            raise InvalidOption(f"slot_size must be a power of two in 64..65536, got {slot_size!r}")
        if not isinstance(group_access, bool):
            raise InvalidOption(f"group_access must be true or false, got {group_access!r}")
        self.mode = 0o660 if group_access else 0o600
        spin = non_negative_number("spin", spin)
        self._segment = segment.attach(
            self.prefix, self.size, self.slot_size, self.mode, storage.initialise
        )
        geometry = self._segment.geometry
        arena = geometry.n_slots * geometry.slot_size  # no larger message is ever stored
        most = largest_payload(self.slot_size, geometry.max_order)
        if min(self.max_message_size, arena) > most:
            self._segment.close()
            raise InvalidOption(
                f"max_message_size {self.max_message_size} is more than an IPC segment frees in "
                f"one journal step with slot_size {self.slot_size}: at most {most}"
            )
        self.segment_id = segment.identity(self._segment.fd)  # names this host's segment
        mm = self._segment.mm
        self._storage = store = storage.Storage(mm, geometry, self.counters)
        self._lock = Lock(self._segment.fd, mm, store.flush)
        self._registry = Registry(mm, geometry, store.waits, self._segment.fd)
        wake: list[int] = []
        with self._lock as j:
            me = self._registry.claim(j, wake)
        try:
            bell = Doorbell(self.prefix, me[0], self.mode)
        except BaseException:
            with self._lock as j:
                self._registry.release(j, me[0])
            self._segment.close()
            raise
        self._ringer = Ringer(self.prefix)
        wakes = Wakes(self._ringer, self._registry)
        keys = Keys()
        self._out = Outbox(geometry.n_slots, 1 << geometry.max_order)
        self._streak = False  # the last operation was a send: a next one may be held
        self._holding = True  # sends may be held in the outbox (until close())
        self._ahead = TakeAhead(self.counters, self._lock, store.queues, self.prefix)
        self._receivers = Receivers(
            store, self._lock, self._registry, me, bell, self._ringer, wakes, self._ahead, keys,
            spin, self.counters, self.expiry,
        )  # fmt: skip
        self.parts = Parts(self._segment, store, self._lock, self._registry, self._receivers,
                           self._ringer, self._ahead, self._out)  # fmt: skip
        # What the hot paths use, one attribute each: the parts whose methods they call (a
        # method of an object is looked up faster than a bound method kept in an attribute)
        # and the dicts they read.
        self._keys, self._known = keys, keys.known
        self._wakes = wakes
        self._queues, self._takes = store.queues, store.takes
        self._local = self._receivers.local
        self._held = self._ahead.held
        self._mutex = self._lock.mutex
        self._routes: dict[str, Route] = {}  # channel -> the queue its sends go to
        self._inboxes = self._receivers.inboxes
        self._handing = self._receivers.handing
        self.hand_over = self._handing.hand_over  # layer.local's bridge: see handing.py
        wakes.post(wake)

    @property
    def spin(self) -> float:
        """Seconds a parked receive polls its wake ring before sleeping (0: never)."""
        return self._receivers.spin

    @spin.setter
    def spin(self, seconds: float) -> None:
        self._receivers.spin = non_negative_number("spin", seconds)

    # -- storage ------------------------------------------------------------------------------

    async def _push(self, channel: str, payload: bytes, capacity: int) -> None:
        self._store(channel, payload, capacity)

    def _store(self, channel: str, payload: bytes, capacity: int) -> bool:
        """Hold or push ``payload`` now: an IPC send never waits (``send`` saves the ``_push``
        coroutine)."""
        # A process-specific channel's sends go to its inbox, each after its local part.
        channel, key, head = self._routes.get(channel) or self._route(channel)
        if head:
            payload = head + payload
        out = self._out
        streak, self._streak = self._streak, True
        if streak:
            # Under the mutex: other threads' loops hold sends in the same outbox, and close()
            # flushes it for the last time under it (a send it admits is never left behind).
            with self._mutex:
                if (
                    self._holding
                    and self._lock.usable
                    and out.admit(
                        channel, key, payload, self._queues.slots_for(len(payload)), get_ident()
                    )
                ):
                    if out.due():
                        self._send_out()
                    elif out.loop_token is None or len(out.items) == 1:  # else one is scheduled
                        loop = asyncio.get_running_loop()  # ~0.25 µs: once per batch
                        if out.loop_token is not loop:  # one flush per loop turn (and per loop)
                            out.loop_token = loop
                            loop.call_soon(self._send_out, True)
                    return True
        wake: list[int] = []
        try:
            with self._lock as j:
                expires = time.monotonic() + self.expiry
                if out.items:  # held sends go first, in the same critical section
                    out.flush(j, self._queues, expires, self.get_capacity, wake)
                try:
                    waker, count = self._queues.push(j, key, payload, expires, capacity)
                except ChannelFull:
                    out.refill(channel, capacity, capacity)  # no credit while it is full
                    raise
                # Under the lock, with the count it read: another thread's loop may flush
                # held sends to this channel as soon as it is released (a stale count would
                # credit room they took).
                out.refill(channel, capacity, count)
                out.seen(self._queues)
        finally:
            if wake:
                self._wakes.post(wake)
        if waker != NIL:
            self._wakes.ring(waker)
        return True

    def _ready(self, channel: str) -> bytes | Message | None:
        """A message an earlier receive here took ahead: no lock and no coroutine.

        It leaves ``_streak`` alone: a process receiving what it took ahead is in a burst, so
        its next send may be held (a ping-pong never has messages ahead and goes to ``_pop``).
        """
        return self._ahead.take(channel) if channel in self._held else None

    async def _pop(self, channel: str) -> bytes | Message:
        self._streak = False
        ahead = self._ahead
        # Under the mutex from the last look at what is held to the wait: ``hand_over`` (from
        # another thread's loop) either sees this receive waiting or holds before that look.
        with self._mutex:
            if (payload := self._ready(channel)) is not None:
                return payload
            if channel not in self._local:  # else receives here wait already: queue behind them
                bang = channel.find("!")
                if bang >= 0:
                    payload = self._take_inbox(channel, channel[: bang + 1])
                    if payload is not None:
                        return payload
                else:
                    key = self._known.get(channel) or self._keys.of(channel)
                    now = time.monotonic()
                    extra = ahead.extra(channel, now)
                    taken: list[tuple[bytes, float]] = []
                    with self._lock as j:
                        wake = self._flush_out(j) if self._out.items else None
                        if extra:
                            taken = self._takes.take_run(j, key, now, 1 + extra)
                            payload = taken[0][0] if taken else None
                        else:
                            payload = self._takes.take(j, key, now)
                        if payload is None:
                            self._receivers.register(j, channel, key)
                    if wake:
                        self._wakes.post(wake)
                    if payload is not None:
                        if len(taken) > 1:
                            ahead.keep(channel, taken[1:])
                        return payload
            future = self._receivers.wait(channel)
        try:
            return await future
        except asyncio.CancelledError:
            with self._mutex:  # other threads' loops hand over to and wait on these receives
                payload = handed(future, self._local.get(channel))
                if payload is not None:
                    self._handing.give_back(channel, payload)
                else:
                    self._receivers.drop_idle(channel)
            raise

    def _take_inbox(self, channel: str, inbox: str) -> bytes | Message | None:
        """A receive of a process-specific ``channel`` (under the mutex, none of its receives
        waiting here): take its inbox in runs, handing or holding every message, until one for
        ``channel`` is held or the inbox is empty (then park this instance's node on it).

        With this instance's node on the inbox already (a receive of another of its channels
        waits) and no sends of its own held, it parks at once, without the lock: the inbox was
        empty when the node was parked, and an entry pushed since fired it, so a wake will take
        the inbox for this receive too (a fan-out's members re-arm without a lock round trip).
        """
        receivers = self._receivers
        if inbox in receivers.node_of and not self._out.items and receivers.current():
            return None
        key = self._known.get(inbox) or self._keys.of(inbox)
        take = self._inboxes.take
        with self._lock as j:
            wake = self._flush_out(j) if self._out.items else None
            while True:
                taken, payload = take(j, inbox, key, channel)
                if payload is not None:
                    break
                if not taken:
                    self._receivers.register(j, inbox, key)
                    break
                j.commit()
        if wake:
            self._wakes.post(wake)
        return payload

    async def _group_add(self, group: str, channel: str) -> None:
        expires = time.monotonic() + self.group_expiry
        with self._lock as j:
            self._storage.groups.add(j, self._keys.of(group), self._keys.of(channel), expires)

    async def _group_discard(self, group: str, channel: str) -> None:
        with self._lock as j:
            self._storage.groups.discard(j, self._keys.of(group), self._keys.of(channel))

    async def _group_send(self, group: str, payload: bytes) -> tuple[int, int]:
        wake: list[int] = []
        now = time.monotonic()
        with self._lock as j:
            if self._out.items:
                wake += self._flush_out(j)
            result = self._storage.groups.send(
                j, self._keys.of(group), payload, now + self.expiry, now, self._capacity_of, wake
            )
        self._wakes.post(wake)
        return result

    async def _flush(self) -> None:
        self._out.discard()  # the flush would empty their channels anyway
        self._ahead.clear()
        with self._lock as j:
            self._lock.begin_flush()
            self._storage.flush()
            self._lock.end_flush()
            self._receivers.check_epoch(j)
            me = self._receivers.waker
            wake = [w for w in range(self._registry.count) if w != me]
        self._wakes.post(wake, only_live=True)

    async def _storage_counts(self) -> StorageCounts:
        self._send_out()
        held = self._held  # taken ahead: no longer in the segment, not yet received
        with self._lock:  # its mutex guards the held messages too
            queued, channels, groups = self._storage.counts()
            # Held messages count by their queue, an inbox once, as Redis counts list keys.
            queues = {inbox_of(channel) for channel in held}
            channels += sum(not self._storage.takes.active(self._keys.of(q)) for q in queues)
            queued += self._ahead.queued()
        return StorageCounts(queued=queued, channels=channels, groups=groups)

    async def close(self, unlink: bool = False) -> None:
        """Detach (withdrawing this instance's waiters); ``unlink=True`` also removes the
        segment and doorbells from ``/dev/shm`` (processes still attached keep their view)."""
        if self._receivers.closed:
            return
        with self._mutex:  # sends from here on go straight to the segment, then are refused
            self._holding = False
            self._send_out()
        self._wakes.post(self._ahead.close())
        self._receivers.close()
        self._ringer.close()
        self._lock.close()
        self._segment.close()
        if unlink:
            segment.unlink(self.prefix)

    def sizing(self) -> list[str]:
        """What the segment holds, for ``check-config`` (``layer/ipc/sizing.py``)."""
        return sizing(self._segment.geometry, self._storage.extents, self.max_message_size)

    async def discard(self) -> None:
        """Close; remove the segment and doorbells too if this instance created the segment
        and no other instance has attached since."""
        created = self._segment.initialised
        alone = not segment.holders(self._segment.fd)  # our own lock does not count on our fd
        await self.close(unlink=created and alone)

    # -- messages going back or out ----------------------------------------------------------

    def _send_out(self, scheduled: bool = False) -> None:
        """Flush the outbox: it is due, the loop turn that filled it ended (``scheduled``),
        or this instance is about to do something else that must come after those sends."""
        out = self._out
        if scheduled:
            out.loop_token = None
        if out.items and not self._receivers.closed:
            with self._lock as j:
                wake = self._flush_out(j)
            self._wakes.post(wake)

    def _flush_out(self, j: Journal) -> list[int]:
        wake: list[int] = []
        self._out.flush(j, self._queues, time.monotonic() + self.expiry, self.get_capacity, wake)
        return wake

    def debug_state(self) -> DebugState:
        """What this instance and its segment hold now, for tests and debugging (one seam
        instead of reaching into the parts): see ``layer.ipc.debug``."""
        return debug_state(self.parts)

    def _route(self, channel: str) -> Route:
        found = route(channel)
        remember(self._routes, channel, found, _ROUTES)  # past clients' names: forgotten at once
        return found

    def _capacity_of(self, name: bytes) -> int:
        return self.get_capacity(name.decode("ascii"))
