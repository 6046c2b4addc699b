"""``verify(prefix)``: an fsck of an IPC segment, every invariant of the layout checked.

The check takes the segment lock (whose entry first repairs a dead holder's half-done mutation,
as any lock holder's does), copies the tables and the slots in use, releases the lock and
checks the copy: a settled state, and other processes are held up for one copy only. It writes
nothing into the segment (but what the lock's repair writes) and never creates one. The
invariants themselves are :mod:`layer.ipc.invariants`.
"""

from __future__ import annotations

import mmap
import os

import posix_ipc

from layer.base import Counters
from layer.exceptions import InvalidOption
from layer.ipc.invariants import Checker, Report
from layer.ipc.journal import Lock
from layer.ipc.layout import (
    G_OFF,
    GEOMETRY,
    GEOMETRY_OFF,
    HEADER_SIZE,
    MAGIC,
    MAGIC_OFF,
    U32,
    U64,
    VERSION,
    Geometry,
)
from layer.ipc.segment import SHM_DIR, check_owner, check_prefix, shm_name
from layer.ipc.storage import Storage

__all__ = ["NoSegment", "Report", "verify"]


class NoSegment(Exception):
    """There is no segment for the prefix (nothing was created)."""


def verify(prefix: str) -> Report:
    """Check the segment of ``prefix``; raises ``NoSegment`` when it does not exist."""
    name = shm_name(check_prefix(prefix))
    try:
        fd = posix_ipc.SharedMemory(name).fd  # opens an existing segment only
    except posix_ipc.ExistentialError as exc:
        raise NoSegment(f"no IPC segment for prefix {prefix!r} ({SHM_DIR}{name})") from exc
    try:
        try:  # someone else's segment is reported, never locked or repaired
            check_owner(
                fd, f"{SHM_DIR}{name}", 0o660 if os.fstat(fd).st_mode & 0o070 else 0o600, prefix
            )
        except InvalidOption as exc:
            return Report([str(exc)])
        head = os.pread(fd, HEADER_SIZE, 0)
        if len(head) < HEADER_SIZE or U64.unpack_from(head, MAGIC_OFF)[0] != MAGIC:
            return Report([f"{SHM_DIR}{name} is not initialised (no magic word)"])
        values = GEOMETRY.unpack_from(head, GEOMETRY_OFF)
        if values[0] != VERSION:
            return Report([f"{SHM_DIR}{name} has layout version {values[0]}, not {VERSION}"])
        geometry = Geometry.unpack(values)
        if os.fstat(fd).st_size < geometry.size:
            return Report([f"{SHM_DIR}{name} is shorter than its geometry's {geometry.size}"])
        mm = mmap.mmap(fd, geometry.size)
        try:
            # The copy's buffer is allocated (and its pages faulted in) before the lock: the
            # lock is held for one memcpy (~0.1 s for 256 MB, all slots used).
            snapshot = bytearray(_end(mm, geometry))
            lock = Lock(fd, mm, Storage(mm, geometry, Counters()).flush)
            with lock, memoryview(mm) as view:
                if (end := _end(mm, geometry)) > len(snapshot):  # slots used since: rare
                    snapshot.extend(bytes(end - len(snapshot)))
                memoryview(snapshot)[:end] = view[:end]
        except RuntimeError as exc:  # the lock's entry refused to repair (a corrupt journal)
            return Report([f"the lock could not be taken: {exc}"])
        finally:
            mm.close()
    finally:
        os.close(fd)
    report = Checker(snapshot, geometry).run()
    report.repaired = lock.recoveries
    return report


def _end(mm: mmap.mmap, g: Geometry) -> int:
    """The segment's bytes up to its last slot ever used (the slot bump pointer)."""
    return g.slots + min(int(U32.unpack_from(mm, G_OFF + 8)[0]), g.n_slots) * g.slot_size
