"""The registry of attached instances: a waker record each, holding its wake ring.

A sender that fires a waiter node appends the node to its owner's ring and rings the owner's
doorbell (:mod:`layer.ipc.doorbell`); the owner's event loop drains the ring, so a wake costs
O(1) whatever the number of channels the owner waits on. An instance holds an OFD byte lock
on the segment for its record while it lives; the kernel drops it when the process dies
(whatever its pid namespace), and a survivor that finds a record "in use" but unlocked reaps
it: frees its nodes and hands any wake it had not consumed to the next waiter.
"""

from __future__ import annotations

import mmap
import struct

from layer.ipc import segment
from layer.ipc.journal import Journal
from layer.ipc.layout import (
    FIRED,
    NIL,
    NODE,
    NODE_BUMP,
    NODE_SIZE,
    U32,
    W_READ,
    W_RING,
    W_SPINNING,
    W_STATE,
    WAKER,
    WAKER_SIZE,
    Geometry,
)
from layer.ipc.waitlists import WaitLists

_STATE_GEN = struct.Struct("<II")


class Registry:
    """Claim, drain, release and reap waker records; every method runs under the lock."""

    def __init__(self, mm: mmap.mmap, geometry: Geometry, waits: WaitLists, fd: int) -> None:
        self.mm = mm
        self.waits = waits
        self.fd = fd
        self.base = geometry.wakers
        self.count = geometry.n_wakers

    def claim(self, j: Journal, wake: list[int]) -> tuple[int, int]:
        """Take a free (or dead instance's) record; return ``(index, generation)``."""
        for waker in range(self.count):
            if segment.try_hold(self.fd, waker):
                at = self.base + waker * WAKER_SIZE
                state, gen = _STATE_GEN.unpack_from(self.mm, at + W_STATE)
                if state:
                    self.reap(j, waker, wake)
                    gen = _STATE_GEN.unpack_from(self.mm, at + W_STATE)[1]
                gen = (gen + 1) & 0xFFFF
                j.save(at, WAKER.size)
                WAKER.pack_into(self.mm, at, 1, gen, 0, 0, 0, 0)
                return waker, gen
        raise RuntimeError(
            f"all {self.count} IPC waker records are held by live layer instances; "
            "close unused layers"
        )

    def release(self, j: Journal, waker: int) -> None:
        """Give the record up (its nodes were withdrawn by the owner); nodes left go stale."""
        at = self.base + waker * WAKER_SIZE
        gen = _STATE_GEN.unpack_from(self.mm, at + W_STATE)[1]
        j.save(at, WAKER.size)
        WAKER.pack_into(self.mm, at, 0, (gen + 1) & 0xFFFF, 0, 0, 0, 0)
        segment.release(self.fd, waker)

    def drain(self, j: Journal, waker: int) -> tuple[list[int], bool]:
        """The nodes fired at ``waker`` since the last drain, and whether its ring overflowed."""
        mm = self.mm
        at = self.base + waker * WAKER_SIZE
        _, _, read, write, overflow, _ = WAKER.unpack_from(mm, at)
        if read == write and not overflow:
            return [], False
        ring = at + W_RING
        nodes = [U32.unpack_from(mm, ring + i * 4)[0] for i in range(read, write)]
        j.save(at + W_READ, 12)
        mm[at + W_READ : at + W_READ + 12] = bytes(12)  # the ring restarts at 0: no wrap-around
        return nodes, bool(overflow)

    def pending(self, waker: int) -> bool:
        """Whether ``waker``'s ring holds wakes (or overflowed): a hint read without the lock,
        which ``drain`` then takes under it."""
        at = self.base + waker * WAKER_SIZE
        _, _, read, write, overflow, _ = WAKER.unpack_from(self.mm, at)
        return bool(read != write or overflow)

    def spinning(self, waker: int) -> bool:
        """Whether ``waker``'s owner is polling its ring (a sender then need not ring it)."""
        return bool(U32.unpack_from(self.mm, self.base + waker * WAKER_SIZE + W_SPINNING)[0])

    def set_spinning(self, waker: int, on: bool) -> None:
        """Only the owner writes its flag, without the lock (see ``Receivers._spin``)."""
        U32.pack_into(self.mm, self.base + waker * WAKER_SIZE + W_SPINNING, int(on))

    def dead(self, me: int) -> list[int]:
        """Records in use whose instance died; a hint read without the lock (see reap_dead)."""
        mm = self.mm
        return [
            waker
            for waker in range(self.count)
            if waker != me
            and U32.unpack_from(mm, self.base + waker * WAKER_SIZE)[0]
            and not segment.is_held(self.fd, waker)
        ]

    def reap_dead(self, j: Journal, candidates: list[int], wake: list[int]) -> None:
        """Reap those of ``candidates`` still in use and unheld now that we hold the lock."""
        mm = self.mm
        for waker in candidates:
            if U32.unpack_from(mm, self.base + waker * WAKER_SIZE)[0] and not segment.is_held(
                self.fd, waker
            ):
                self.reap(j, waker, wake)

    def reap(self, j: Journal, waker: int, wake: list[int]) -> None:
        """Free a dead instance's nodes (passing on wakes it never used), then its record."""
        waits, mm = self.waits, self.mm
        at = self.base + waker * WAKER_SIZE
        gen = _STATE_GEN.unpack_from(mm, at + W_STATE)[1]
        j.commit()
        for node in range(U32.unpack_from(mm, NODE_BUMP)[0]):
            prev, _, idx, owner, ngen = NODE.unpack_from(mm, waits.nodes + node * NODE_SIZE)
            if idx == NIL or owner != waker or ngen != gen:
                continue
            if prev == FIRED:
                waits.pools.free_node(j, node)
                target = waits.pass_on(j, idx)
                if target != NIL:
                    wake.append(target)
            else:
                waits.unregister(j, node)
            j.commit()
        j.save(at, WAKER.size)
        WAKER.pack_into(mm, at, 0, (gen + 1) & 0xFFFF, 0, 0, 0, 0)
        j.commit()
