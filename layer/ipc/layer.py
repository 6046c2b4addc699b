"""``IPCChannelLayer``: the base's storage over one POSIX shared-memory segment per prefix.

Every operation is one short critical section under the segment lock (no ``await`` inside, so
it is atomic for the event loop too). A receive that finds its channel empty registers a waiter
node for (this instance, channel) in the same critical section, so no send can slip between
"empty" and "waiting"; it then waits on a future. The event loop watches the instance's
doorbell FIFO and drains the wake ring when it chimes; a timer every 0.25 s while receivers
wait reaps dead instances, so a crash delays survivors by well under a second.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from typing import Any

from layer.base import BaseChannelLayer, StorageCounts
from layer.exceptions import ChannelFull, InvalidOption
from layer.ipc import segment
from layer.ipc.doorbell import Doorbell, Ringer
from layer.ipc.journal import Journal, Lock
from layer.ipc.layout import NIL
from layer.ipc.outbox import Outbox
from layer.ipc.store import Store
from layer.ipc.table import Key, make_key
from layer.ipc.wakers import Wakers
from layer.options import byte_size, positive_int

POLL = 0.25  # seconds between liveness checks while this instance has waiting receivers
_KEY_CACHE = 8192
_SPARE_NODES = 64


class IPCChannelLayer(BaseChannelLayer):
    """Channel layer shared by the processes of one host through ``/dev/shm``."""

    cross_process = True

    def __init__(
        self,
        *,
        prefix: str = "kit",
        size: int | str = "256MB",
        slot_size: int = 256,
        group_access: bool = False,
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
        self._segment = segment.attach(self.prefix, self.size, self.slot_size, self.mode)
        self._store = Store(self._segment.mm, self._segment.geometry, self.counters)
        self._lock = Lock(self._segment.fd, self._segment.mm, self._store.flush)
        self._wakers = Wakers(self._store, self._segment.fd)
        wake: list[int] = []
        with self._lock as j:
            self._waker, self._gen = self._wakers.claim(j, wake)
            self._epoch = self._store.epoch()
        try:
            self._bell = Doorbell(self.prefix, self._waker, self.mode)
        except BaseException:
            with self._lock as j:
                self._wakers.release(j, self._waker)
            self._segment.close()
            raise
        self._ringer = Ringer(self.prefix)
        self._out = Outbox()
        self._streak = False  # the last operation was a send: a next one may be held
        self._keys: dict[str, Key] = {}
        self._local: dict[str, deque[asyncio.Future[bytes]]] = {}
        self._node_of: dict[str, int] = {}
        self._chan_of: dict[int, str] = {}
        self._spare: list[int] = []  # fired nodes kept for the next wait (no free + alloc)
        self._loop: asyncio.AbstractEventLoop | None = None  # the loop watching the doorbell
        self._timer: asyncio.TimerHandle | None = None
        self._deferred = False  # chimes were left in the FIFO for the next loop turn
        self._closed = False
        self._post(wake)

    # -- storage ------------------------------------------------------------------------------

    async def _push(self, channel: str, payload: bytes, capacity: int) -> None:
        key = self._keys.get(channel) or self._key(channel)
        out, store = self._out, self._store
        streak, self._streak = self._streak, True
        if (
            streak
            and not self._lock.forked
            and out.admit(channel, key, payload, store.slots_for(len(payload)))
        ):
            if out.due():
                self._send_out()
            else:
                loop = asyncio.get_running_loop()
                if out.loop_token is not loop:  # one flush per loop turn (and per loop)
                    out.loop_token = loop
                    loop.call_soon(self._send_out, True)
            return
        wake: list[int] = []
        try:
            with self._lock as j:
                expires = time.monotonic() + self.expiry
                if out.items:  # held sends go first, in the same critical section
                    out.flush(j, store, expires, self.get_capacity, wake)
                try:
                    waker, count = store.push(j, key, payload, expires, capacity)
                except ChannelFull:
                    out.refill(channel, capacity, capacity)  # no credit while it is full
                    raise
                out.room = store.free_slots() // 2
        finally:
            if wake:
                self._post(wake)
        out.refill(channel, capacity, count)
        if waker != NIL:
            self._ringer.ring(waker)

    async def _pop(self, channel: str) -> bytes:
        self._streak = False
        local = self._local.get(channel)
        if local is None:
            key = self._keys.get(channel) or self._key(channel)
            with self._lock as j:
                wake = self._flush_out(j) if self._out.items else None
                payload = self._store.take(j, key, time.monotonic())
                if payload is None:
                    self._register(j, channel, key)
            if wake:
                self._post(wake)
            if payload is not None:
                return payload
            local = self._local[channel] = deque()
        loop = asyncio.get_running_loop()
        future: asyncio.Future[bytes] = loop.create_future()
        local.append(future)
        if self._loop is not loop:
            self._watch(loop)
        if self._timer is None:
            self._timer = loop.call_later(POLL, self._tick)
        try:
            return await future
        except asyncio.CancelledError:
            if future.done() and not future.cancelled():
                self._give_back(channel, future.result())
            else:
                self._forget(channel, future)
            raise

    async def _group_add(self, group: str, channel: str) -> None:
        expires = time.monotonic() + self.group_expiry
        with self._lock as j:
            self._store.group_add(j, self._key(group), self._key(channel), expires)

    async def _group_discard(self, group: str, channel: str) -> None:
        with self._lock as j:
            self._store.group_discard(j, self._key(group), self._key(channel))

    async def _group_send(self, group: str, payload: bytes) -> tuple[int, int]:
        wake: list[int] = []
        now = time.monotonic()
        with self._lock as j:
            if self._out.items:
                wake += self._flush_out(j)
            result = self._store.group_send(
                j, self._key(group), payload, now + self.expiry, now, self._capacity_of, wake
            )
        self._post(wake)
        return result

    async def _flush(self) -> None:
        self._out.discard()  # the flush would empty their channels anyway
        with self._lock as j:
            self._lock.begin_flush()
            self._store.flush()
            self._lock.end_flush()
            self._check_epoch(j)
            wake = [w for w in range(self._wakers.count) if w != self._waker]
        self._post(wake, only_live=True)

    async def _storage_counts(self) -> StorageCounts:
        self._send_out()
        with self._lock:
            queued, channels, groups = self._store.counts()
        return StorageCounts(queued=queued, channels=channels, groups=groups)

    async def close(self, unlink: bool = False) -> None:
        """Detach (withdrawing this instance's waiters); ``unlink=True`` also removes the
        segment and semaphores from ``/dev/shm`` (processes still attached keep their view)."""
        if self._closed:
            return
        self._send_out()
        self._closed = True
        self._unwatch()
        wake: list[int] = []
        with self._lock as j:
            if not self._check_epoch(j):
                for node in [*self._chan_of, *self._spare]:
                    wake.append(self._store.unregister(j, node))
                    j.commit()
            self._wakers.release(j, self._waker)
        self._post([w for w in wake if w not in (NIL, self._waker)])
        for local in self._local.values():
            for future in local:
                future.cancel()
        self._bell.close()
        self._ringer.close()
        self._segment.close()
        if unlink:
            segment.unlink(self.prefix)

    # -- waiting ------------------------------------------------------------------------------

    def _register(self, j: Journal, channel: str, key: Key) -> None:
        self._check_epoch(j)
        if channel not in self._node_of:
            spare = self._spare.pop() if self._spare else NIL
            node = self._store.register(j, key, self._waker, self._gen, spare)
            self._node_of[channel] = node
            self._chan_of[node] = channel

    def _check_epoch(self, j: Journal) -> bool:
        """After a flush every node is gone: forget ours and re-register waiting channels."""
        epoch = self._store.epoch()
        if epoch == self._epoch:
            return False
        self._epoch = epoch
        self._node_of.clear()
        self._chan_of.clear()
        self._spare.clear()  # the flush emptied the node pool
        for channel in self._local:
            self._register(j, channel, self._key(channel))
        return True

    def _forget(self, channel: str, future: asyncio.Future[bytes]) -> None:
        """A waiting receive was cancelled."""
        local = self._local.get(channel)
        if local is not None:
            with contextlib.suppress(ValueError):
                local.remove(future)
        self._drop_idle(channel)

    def _drop_idle(self, channel: str) -> None:
        """Withdraw this instance's node for ``channel`` if nobody here waits on it any more.

        A node that has already fired stays: draining the ring passes its wake on.
        """
        local = self._local.get(channel)
        if self._closed or (local and any(not f.done() for f in local)):
            return
        self._local.pop(channel, None)
        node = self._node_of.get(channel)
        if node is None:
            return
        with self._lock as j:
            if not self._check_epoch(j) and not self._store.fired(node):
                self._store.unregister(j, node)
                del self._node_of[channel], self._chan_of[node]

    def _give_back(self, channel: str, payload: bytes) -> None:
        """A cancelled receive had already been handed ``payload``: the next waiter gets it."""
        local = self._local.get(channel)
        while local:
            future = local.popleft()
            if not future.done():
                future.set_result(payload)
                return
        if self._closed:
            return
        self._drop_idle(channel)
        try:
            with self._lock as j:
                waker = self._store.push_front(
                    j, self._key(channel), payload, time.monotonic() + self.expiry
                )
        except ChannelFull:
            self.counters.dropped_full += 1
            return
        if waker != NIL:
            self._ringer.ring(waker)

    def _send_out(self, scheduled: bool = False) -> None:
        """Flush the outbox: it is due, the loop turn that filled it ended (``scheduled``),
        or this instance is about to do something else that must come after those sends."""
        out = self._out
        if scheduled:
            out.loop_token = None
        if out.items and not self._closed:
            with self._lock as j:
                wake = self._flush_out(j)
            self._post(wake)

    def _flush_out(self, j: Journal) -> list[int]:
        wake: list[int] = []
        self._out.flush(j, self._store, time.monotonic() + self.expiry, self.get_capacity, wake)
        return wake

    def _on_chime(self) -> None:
        """The doorbell rang: deliver first, and consume the chimes one loop turn later.

        A woken receiver's reply is a roundtrip's critical path, so the FIFO's bytes are left
        there until the loop's next turn, which runs the woken receivers' steps first and then
        this again (the FIFO is still readable): that call reads them. Nothing is missed: a
        sender appends to the ring before it chimes, and the ring is looked at again (without
        the lock: a hint that ``_on_wake`` checks under it) after every read of the FIFO.
        """
        if self._deferred or not self._wakers.pending(self._waker):
            self._deferred = False
            self._bell.drain()
            if not self._wakers.pending(self._waker):
                return
        else:
            self._deferred = True
        self._on_wake()

    def _tick(self) -> None:
        """While receivers wait: reap dead instances and pick up wakes whose chime was lost
        (a sender killed between its send and its chime)."""
        self._timer = None
        if self._local and not self._closed:
            self._on_wake(reap=True)
            if self._local and self._loop is not None and not self._loop.is_closed():
                self._timer = self._loop.call_later(POLL, self._tick)

    def _on_wake(self, reap: bool = False) -> None:
        """Deliver what fired at this instance (runs on the event loop)."""
        if self._closed:
            return
        store = self._store
        wake: list[int] = []
        dead = self._wakers.dead(self._waker) if reap else []  # syscalls outside the lock
        with self._lock as j:
            if dead:
                self._wakers.reap_dead(j, dead, wake)
            self._check_epoch(j)
            nodes, overflow = self._wakers.drain(j, self._waker)
            j.commit()
            if overflow:
                nodes += [node for node in self._chan_of if store.fired(node)]
            for node in nodes:
                channel = self._chan_of.get(node)
                if channel is None or not store.fired(node):
                    continue  # a stale ring entry
                del self._chan_of[node], self._node_of[channel]
                if len(self._spare) < _SPARE_NODES:
                    self._spare.append(node)
                else:
                    store.free_node(j, node)
                    j.commit()
                self._deliver(j, channel, wake)
        if wake:
            self._post(wake)

    def _deliver(self, j: Journal, channel: str, wake: list[int]) -> None:
        """Hand queued payloads to this instance's receivers on ``channel``; re-arm or pass on."""
        local = self._local.get(channel)
        key = self._keys.get(channel) or self._key(channel)
        now = time.monotonic()
        while local:
            future = local[0]
            if future.done():
                local.popleft()
                continue
            payload = self._store.take(j, key, now)
            j.commit()
            if payload is None:
                break
            local.popleft()
            future.set_result(payload)
        if local:
            self._register(j, channel, key)
            return
        self._local.pop(channel, None)
        idx = self._store.channel_index(*key)
        if idx != NIL and (waker := self._store.pass_on(j, idx)) != NIL:
            wake.append(waker)

    def _watch(self, loop: asyncio.AbstractEventLoop) -> None:
        """Have ``loop`` (the one receiving now) watch the doorbell instead of an older loop."""
        self._unwatch()
        loop.add_reader(self._bell.fd, self._on_chime)
        self._loop = loop

    def _unwatch(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._loop is not None and not self._loop.is_closed():
            self._loop.remove_reader(self._bell.fd)
        self._loop = None
        self._deferred = False  # the next loop's first chime reads what was left

    def _post(self, wakers: list[int], only_live: bool = False) -> None:
        for waker in set(wakers):
            if waker != NIL and (not only_live or segment.is_held(self._segment.fd, waker)):
                self._ringer.ring(waker)

    # -- keys ---------------------------------------------------------------------------------

    def _key(self, name: str) -> Key:
        key = self._keys.get(name)
        if key is None:
            if len(self._keys) >= _KEY_CACHE:
                self._keys.clear()
            key = self._keys[name] = make_key(name)
        return key

    def _capacity_of(self, name: bytes) -> int:
        return self.get_capacity(name.decode("ascii"))
