"""How an IPC layer instance waits: waiter nodes, its doorbell, and delivery when it rings.

A receive that finds its channel empty registers a node for (this instance, channel) in the
same critical section, so no send can slip between "empty" and "waiting"; the event loop
watches the instance's doorbell FIFO and drains the wake ring when it chimes; a timer every
``POLL`` seconds while receivers wait reaps dead instances, so a crash delays survivors by well
under a second. A mixin of ``IPCChannelLayer``, which owns the state declared here.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque

from layer.flow import remember
from layer.ipc import segment
from layer.ipc.ahead import TakeAhead
from layer.ipc.doorbell import Doorbell, Ringer
from layer.ipc.journal import Journal, Lock
from layer.ipc.layout import NIL
from layer.ipc.store import Store
from layer.ipc.table import Key, make_key
from layer.ipc.wakers import Wakers

SPIN = 0.0002  # seconds a parked receive polls before it sleeps (see Waiting._spin)
POLL = 0.25  # seconds between liveness checks while this instance has waiting receivers
_KEY_CACHE = 8192
_SPARE_NODES = 64


class Waiting:
    """Receivers waiting on channels of one layer instance, and the wakes that serve them."""

    _store: Store
    _lock: Lock
    _wakers: Wakers
    _waker: int
    _gen: int
    _epoch: int
    _segment: segment.Segment
    _bell: Doorbell
    _ringer: Ringer
    _ahead: TakeAhead
    _keys: dict[str, Key]
    _local: dict[str, deque[asyncio.Future[bytes]]]  # waiting receives, per channel
    _node_of: dict[str, int]
    _chan_of: dict[int, str]
    _spare: list[int]  # fired nodes kept for the next wait (no free + alloc)
    _loop: asyncio.AbstractEventLoop | None  # the loop watching the doorbell
    _timer: asyncio.TimerHandle | None
    _deferred: bool  # chimes were left in the FIFO for the next loop turn
    _closed: bool
    spin: float  # seconds a parked receive polls the wake ring before sleeping (0: never)
    _spin_until: float  # when the current spin ends (0.0: not spinning)

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
        store = self._store
        for channel in self._local:
            key = self._key(channel)
            self._register(j, channel, key)
            # A send since the flush found no node here: hand its message to a waiter now.
            waker = store.pass_on(j, store.channel_index(*key))
            j.commit()  # one journal step per channel: an instance may wait on thousands
            if waker != NIL:
                self._ring(waker)
        return True

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

    def _spin(self, loop: asyncio.AbstractEventLoop) -> None:
        """A receive parks: poll the wake ring for ``spin`` seconds before sleeping on the FIFO.

        A wake through the FIFO costs the sender a ``write`` that schedules us and costs us an
        ``epoll_wait`` return (~40 µs each on a VM), more than a whole send/receive. While our
        flag says "spinning" senders skip the ``write`` and we notice their wakes by reading the
        ring once per loop turn (``call_soon``: the loop keeps serving its sockets meanwhile).
        A process parking again within ``spin`` keeps spinning, one that hears nothing sleeps,
        so an idle process still costs ~0 CPU. The flag is ours alone and set without the lock;
        it is cleared before a locked drain, so a sender that saw it set appended its wake
        before that drain read the ring (the lock orders the two), and a sender that comes
        after sees it cleared and rings.
        """
        if not self.spin:
            return
        spinning = self._spin_until
        self._spin_until = time.monotonic() + self.spin
        if not spinning:
            self._wakers.set_spinning(self._waker, True)
            loop.call_soon(self._poll, loop)

    def _poll(self, loop: asyncio.AbstractEventLoop) -> None:
        if loop is not self._loop:
            return  # another loop took over the doorbell (``_unwatch`` ended this spin)
        try:
            if not self._closed and self._wakers.pending(self._waker):
                self._on_wake()
        except BaseException:  # the loop reports it; the doorbell takes over the wakes
            self._end_spin(chime=True)
            raise
        if self._closed or not self._local or time.monotonic() >= self._spin_until:
            self._end_spin(chime=False)
        else:
            loop.call_soon(self._poll, loop)

    def _end_spin(self, chime: bool) -> None:
        """Clear our flag, then pick up the wakes that skipped the FIFO while it was set: drain
        them now under the lock, or (``chime``) ring our own FIFO so the doorbell's reader,
        maybe on another loop, drains them."""
        self._spin_until = 0.0
        if self._closed:
            return
        self._wakers.set_spinning(self._waker, False)
        if chime:
            self._ringer.ring(self._waker)
        else:
            self._on_wake()

    def _ring(self, waker: int) -> None:
        if not self._wakers.spinning(waker):
            self._ringer.ring(waker)

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
                self._deliver(j, channel, wake)
                j.commit()  # one journal step per channel delivered: a ring holds up to 64
        if wake:
            self._post(wake)

    def _deliver(self, j: Journal, channel: str, wake: list[int]) -> None:
        """Hand queued payloads to this instance's receivers on ``channel``; re-arm or pass on."""
        local = self._local.get(channel)
        key = self._keys.get(channel) or self._key(channel)
        if local:  # the waiting receives first, in order; then up to PREFETCH more, if allowed
            waiting = [future for future in local if not future.done()]
            most = len(waiting) + self._ahead.waiting_extra(channel) if waiting else 0
            taken = self._store.take_run(j, key, time.monotonic(), most)
            for future, (payload, _) in zip(waiting, taken, strict=False):
                future.set_result(payload)
            if len(taken) > len(waiting):
                self._ahead.keep(channel, taken[len(waiting) :])
            local.clear()
            local.extend(waiting[len(taken) :])
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
        if self._spin_until:  # wakes that skipped the FIFO meanwhile: chime for the next loop
            self._end_spin(chime=True)
        self._deferred = False  # the next loop's first chime reads what was left

    def _post(self, wakers: list[int], only_live: bool = False) -> None:
        for waker in set(wakers):
            if waker != NIL and (not only_live or segment.is_held(self._segment.fd, waker)):
                self._ring(waker)

    # -- keys ---------------------------------------------------------------------------------

    def _key(self, name: str) -> Key:
        key = self._keys.get(name)
        if key is None:
            key = make_key(name)
            remember(self._keys, name, key, _KEY_CACHE)
        return key
