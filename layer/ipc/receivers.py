"""An IPC layer instance's parked receives: waiter nodes, its doorbell, delivery when it rings.

A receive that finds its channel empty registers a node for (this instance, channel) in the
same critical section, so no send can slip between "empty" and "waiting"; the event loop
watches the instance's doorbell FIFO and drains the wake ring when it chimes; a timer every
``POLL`` seconds while receivers wait reaps dead instances, so a crash delays survivors by well
under a second. ``IPCChannelLayer`` owns one ``Receivers`` and parks its receives there.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque

from layer.base import Counters
from layer.exceptions import LayerClosed
from layer.ipc.ahead import TakeAhead
from layer.ipc.doorbell import Doorbell, Ringer, Wakes
from layer.ipc.handing import Handing
from layer.ipc.inbox import Inboxes, inbox_of
from layer.ipc.journal import Journal, Lock
from layer.ipc.layout import NIL
from layer.ipc.registry import Registry
from layer.ipc.storage import Storage
from layer.ipc.table import Key, Keys
from layer.messages import Message

SPIN = 0.0002  # seconds a parked receive polls before it sleeps (see Receivers._spin)
POLL = 0.25  # seconds between liveness checks while this instance has waiting receivers
_SPARE_NODES = 64


class Receivers:
    """Receivers waiting on channels of one layer instance, and the wakes that serve them."""

    def __init__(
        self,
        storage: Storage,
        lock: Lock,
        registry: Registry,
        me: tuple[int, int],
        bell: Doorbell,
        ringer: Ringer,
        wakes: Wakes,
        ahead: TakeAhead,
        keys: Keys,
        spin: float,
        counters: Counters,
        expiry: float,
    ) -> None:
        self._storage = storage
        self._waits = storage.waits
        self._lock = lock
        self._registry = registry
        self.waker, self.gen = me  # our record in the registry, and its generation
        self.bell = bell
        self._ringer = ringer
        self._wakes = wakes
        self._ahead = ahead
        self._keys = keys
        self.spin = spin  # seconds a parked receive polls the wake ring before sleeping
        self.epoch = storage.epoch()
        self.local: dict[str, deque[asyncio.Future[bytes | Message]]] = {}  # waiting receives
        self.node_of: dict[str, int] = {}
        self.chan_of: dict[int, str] = {}
        self.spare: list[int] = []  # fired nodes kept for the next wait (no free + alloc)
        self.loop: asyncio.AbstractEventLoop | None = None  # the loop watching the doorbell
        self._timer: asyncio.TimerHandle | None = None
        self.deferred = False  # chimes were left in the FIFO for the next loop turn
        self.closed = False
        self._spin_until = 0.0  # when the current spin ends (0.0: not spinning)
        # Messages handed here without a wake, and this instance's inboxes taken in runs.
        self.handing = Handing(lock.mutex, self, ahead, lock, storage.queues, keys, wakes,
                               counters, expiry)  # fmt: skip
        self.inboxes = Inboxes(storage.takes, self.handing.deliver)

    def wait(self, channel: str) -> asyncio.Future[bytes | Message]:
        """Park a receive on ``channel`` (registered in the segment by ``register``)."""
        if self.closed:  # its doorbell is closed: nothing could wake it
            raise LayerClosed
        loop = asyncio.get_running_loop()
        local = self.local.get(channel)
        if local is None:
            local = self.local[channel] = deque()
        future: asyncio.Future[bytes | Message] = loop.create_future()
        local.append(future)
        if self.loop is not loop:
            self._watch(loop)
        if self._timer is None:
            self._timer = loop.call_later(POLL, self._tick)
        self._spin(loop)
        return future

    def register(self, j: Journal, channel: str, key: Key) -> None:
        """Park this instance's node on ``channel``'s queue (an inbox for every process-specific
        channel of it: one node however many of them are waited on)."""
        self.check_epoch(j)
        if channel not in self.node_of:
            spare = self.spare.pop() if self.spare else NIL
            node = self._waits.register(j, key, self.waker, self.gen, spare)
            self.node_of[channel] = node
            self.chan_of[node] = channel

    def current(self) -> bool:
        """Whether no flush emptied the segment since this instance's nodes were parked (a
        hint without the lock: a flush after it is picked up by the next wake or ``POLL``)."""
        return self._storage.epoch() == self.epoch

    def check_epoch(self, j: Journal) -> bool:
        """After a flush every node is gone: forget ours and re-register waiting channels."""
        epoch = self._storage.epoch()
        if epoch == self.epoch:
            return False
        self.epoch = epoch
        self.node_of.clear()
        self.chan_of.clear()
        self.spare.clear()  # the flush emptied the node pool
        waits, table = self._waits, self._storage.table
        for channel in {inbox_of(channel) for channel in self.local}:
            key = self._keys.of(channel)
            self.register(j, channel, key)
            # A send since the flush found no node here: hand its message to a waiter now.
            waker = waits.pass_on(j, table.channel_index(*key))
            j.commit()  # one journal step per channel: an instance may wait on thousands
            if waker != NIL:
                self._wakes.ring(waker)
        return True

    def drop_idle(self, channel: str) -> None:
        """Withdraw this instance's node for ``channel`` if nobody here waits on it any more.

        A node that has already fired stays: draining the ring passes its wake on. An inbox's
        node stays while a receive here waits on another of its channels.
        """
        with self._lock.mutex:  # receives of other threads' loops share an inbox's node
            local = self.local.get(channel)
            if self.closed or (local and any(not f.done() for f in local)):
                return
            self.local.pop(channel, None)
            inbox = inbox_of(channel)
            if (inbox != channel and self.waiting_on(inbox)) or inbox not in self.node_of:
                return
            with self._lock as j:
                if self.check_epoch(j):
                    return
                node = self.node_of.get(inbox)
                if node is not None and not self._waits.fired(node):
                    self._waits.unregister(j, node)
                    del self.node_of[inbox], self.chan_of[node]

    def _on_chime(self) -> None:
        """The doorbell rang: deliver first, and consume the chimes one loop turn later.

        A woken receiver's reply is a roundtrip's critical path, so the FIFO's bytes are left
        there until the loop's next turn, which runs the woken receivers' steps first and then
        this again (the FIFO is still readable): that call reads them. Nothing is missed: a
        sender appends to the ring before it chimes, and the ring is looked at again (without
        the lock: a hint that ``_on_wake`` checks under it) after every read of the FIFO.
        """
        if self.deferred or not self._registry.pending(self.waker):
            self.deferred = False
            self.bell.drain()
            if not self._registry.pending(self.waker):
                return
        else:
            self.deferred = True
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
            self._registry.set_spinning(self.waker, True)
            loop.call_soon(self._poll, loop)

    def _poll(self, loop: asyncio.AbstractEventLoop) -> None:
        if loop is not self.loop:
            return  # another loop took over the doorbell (``_unwatch`` ended this spin)
        try:
            if not self.closed and self._registry.pending(self.waker):
                self._on_wake()
        except BaseException:  # the loop reports it; the doorbell takes over the wakes
            self._end_spin(chime=True)
            raise
        # Not when no receive waits any more: one that was just served usually parks again
        # soon (a reply, the next request), and ending the spin here cost a locked drain and
        # two flag writes per wake, on a ping-pong's critical path. It ends ``spin`` after the
        # last park all the same.
        if self.closed or time.monotonic() >= self._spin_until:
            self._end_spin(chime=False)
        else:
            loop.call_soon(self._poll, loop)

    def _end_spin(self, chime: bool) -> None:
        """Clear our flag, then pick up the wakes that skipped the FIFO while it was set: drain
        them now under the lock, or (``chime``) ring our own FIFO so the doorbell's reader,
        maybe on another loop, drains them."""
        self._spin_until = 0.0
        if self.closed:
            return
        self._registry.set_spinning(self.waker, False)
        if chime:
            self._ringer.ring(self.waker)
        else:
            self._on_wake()

    def _tick(self) -> None:
        """While receivers wait: reap dead instances and pick up wakes whose chime was lost
        (a sender killed between its send and its chime)."""
        self._timer = None
        if self.local and not self.closed:
            self._on_wake(reap=True)
            if self.local and self.loop is not None and not self.loop.is_closed():
                self._timer = self.loop.call_later(POLL, self._tick)

    def _on_wake(self, reap: bool = False) -> None:
        """Deliver what fired at this instance (runs on the event loop)."""
        if self.closed:
            return
        waits = self._waits
        wake: list[int] = []
        dead = self._registry.dead(self.waker) if reap else []  # syscalls outside the lock
        with self._lock as j:
            if dead:
                self._registry.reap_dead(j, dead, wake)
            self.check_epoch(j)
            nodes, overflow = self._registry.drain(j, self.waker)
            j.commit()
            if overflow:
                nodes += [node for node in self.chan_of if waits.fired(node)]
            for node in nodes:
                channel = self.chan_of.get(node)
                if channel is None or not waits.fired(node):
                    continue  # a stale ring entry
                del self.chan_of[node], self.node_of[channel]
                if len(self.spare) < _SPARE_NODES:
                    self.spare.append(node)
                else:
                    self._storage.pools.free_node(j, node)
                self._deliver(j, channel, wake)
                j.commit()  # one journal step per channel delivered: a ring holds up to 64
        if wake:
            self._wakes.post(wake)

    def waiting_on(self, inbox: str) -> bool:
        """Whether a receive here waits on a channel of ``inbox``; forgets its channels that
        only cancelled receives wait on."""
        waiting = False
        for channel in [c for c in self.local if c.startswith(inbox)]:
            if any(not f.done() for f in self.local[channel]):
                waiting = True
            else:
                del self.local[channel]
        return waiting

    def _deliver(self, j: Journal, channel: str, wake: list[int]) -> None:
        """Hand queued payloads to this instance's receivers on ``channel`` (or its inbox);
        re-arm or pass on."""
        local = self.local.get(channel)
        key = self._keys.known.get(channel) or self._keys.of(channel)
        if channel[-1] == "!":  # an inbox: take runs while a receive of one of its channels waits
            while self.waiting_on(channel) and self.inboxes.take(j, channel, key)[0]:
                j.commit()
            if self.waiting_on(channel):  # and the inbox is empty
                self.register(j, channel, key)
                return
            local = None
        elif local:  # the waiting receives first, in order; then up to PREFETCH more, if allowed
            waiting = [future for future in local if not future.done()]
            most = len(waiting) + self._ahead.waiting_extra(channel) if waiting else 0
            taken = self._storage.takes.take_run(j, key, time.monotonic(), most)
            for future, (payload, _) in zip(waiting, taken, strict=False):
                future.set_result(payload)
            if len(taken) > len(waiting):
                self._ahead.keep(channel, taken[len(waiting) :])
            local.clear()
            local.extend(waiting[len(taken) :])
        if local:
            self.register(j, channel, key)
            return
        self.local.pop(channel, None)
        idx = self._storage.table.channel_index(*key)
        if idx != NIL and (waker := self._waits.pass_on(j, idx)) != NIL:
            wake.append(waker)

    def _watch(self, loop: asyncio.AbstractEventLoop) -> None:
        """Have ``loop`` (the one receiving now) watch the doorbell instead of an older loop."""
        self._unwatch()
        loop.add_reader(self.bell.fd, self._on_chime)
        self.loop = loop

    def _unwatch(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self.loop is not None and not self.loop.is_closed():
            self.loop.remove_reader(self.bell.fd)
        self.loop = None
        if self._spin_until:  # wakes that skipped the FIFO meanwhile: chime for the next loop
            self._end_spin(chime=True)
        self.deferred = False  # the next loop's first chime reads what was left

    def close(self) -> None:
        """Stop watching, withdraw this instance's nodes and give its record up; cancel the
        receives still waiting."""
        self.closed = True
        self._unwatch()
        wake: list[int] = []
        with self._lock as j:
            if not self.check_epoch(j):
                for node in [*self.chan_of, *self.spare]:
                    wake.append(self._waits.unregister(j, node))
                    j.commit()
            self._registry.release(j, self.waker)
        self._wakes.post([w for w in wake if w != self.waker])
        for local in self.local.values():
            for future in local:
                future.cancel()
        self.bell.close()
