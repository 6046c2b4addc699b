"""The global lock and the undo journal that make every mutation atomic across crashes.

The lock is ``flock`` on the segment's file descriptor: the kernel drops it the moment its
holder dies, so a ``SIGKILL`` never blocks the others. What the dead holder left half done is
undone by the journal: before a structural word (a pool head, a queue link, a count) is changed,
its old bytes are appended to the journal and the journal length is bumped; the length is reset
to 0 when the mutation is complete (commit). The next lock holder finding a non-zero length
restores the saved bytes in reverse order. Message bytes are written into unreachable slots and
need no journal; they become visible only through a journaled link, written last.

A flush is too big to journal; it sets a flag first and is simply redone by the next holder.
"""

from __future__ import annotations

import fcntl
import mmap
import os
import struct
import threading
import weakref
from collections.abc import Callable

from layer.exceptions import LayerClosed
from layer.ipc.layout import (
    B_BITMAP,
    B_SIZE,
    FLUSHING,
    G_OFF,
    G_SIZE,
    HEADER_SIZE,
    JOURNAL_END,
    JOURNAL_OFF,
    JSTATE,
    JSTATE_OFF,
    RECOVERIES,
    TABLE_GEN,
)

_RECORD = struct.Struct("<QI4x")  # offset, length; then the saved bytes, padded to 8
_END = struct.Struct("<I")
_STATE_WORD = struct.Struct("<Q").unpack_from  # JSTATE as one word: zero when all is settled
_flock, _LOCK_EX, _LOCK_UN = fcntl.flock, fcntl.LOCK_EX, fcntl.LOCK_UN
_LOCK_TRY = fcntl.LOCK_EX | fcntl.LOCK_NB
# A busy lock is retried this many times without sleeping (~0.4 µs a try) before blocking:
# critical sections last a few µs, mostly on the other core, while sleeping in flock costs a
# wake-up and a reschedule (tens of µs on a busy host) and lets the holder re-take the lock
# first. Measured on protocol server + worker over IPC: ~+20 % requests/s (docs/ipc.md).
SPINS = 30
# The three records of a push or pop, packed from values the caller already holds: the channel
# entry's five words, the G block's first five (slots, counts) and one slot link.
_QUEUE_OP = struct.Struct("<QI4xIIIII4x" + "QI4xIIIII4x" + "QI4xI4x")
QUEUE_RECORD_SIZE = _QUEUE_OP.size
_QUEUE_OP_LAST = JOURNAL_END - JOURNAL_OFF - QUEUE_RECORD_SIZE  # the last end it fits after
# A waiter registering with a spare node: the node's four words, the channel entry's five and
# the active-channel count.
_REGISTER = struct.Struct("<QI4xIIII" + "QI4xIIIII4x" + "QI4xI4x")
_NODE_WORDS = struct.Struct("<IIII")
_THREE_WORDS = struct.Struct("<" + "QI4xI4x" * 3)  # three one-word records: a waiter fired
_LONGEST = G_SIZE  # the most bytes one record saves (the G block)


class JournalFull(RuntimeError):
    """A mutation wrote more undo records than the journal holds.

    Every mutation is split into journal steps of bounded size (docs/ipc.md, "Bounds"), so this
    is a bug in the layer, never a property of the data: the lock's exit rolls the step back,
    the call fails with this error and the segment stays usable.
    """

    def __init__(self) -> None:
        super().__init__(
            "IPC journal overflow: one journal step touched more records than the journal holds "
            f"({JOURNAL_END - JOURNAL_OFF} bytes); it was rolled back and the segment is intact"
        )


class CorruptJournal(RuntimeError):
    """The journal left in the segment is not one this layout writes: refused, never applied
    (restoring its records would write wherever they point)."""

    def __init__(self, what: str) -> None:
        super().__init__(
            f"the IPC segment's undo journal is corrupted ({what}); nothing was applied. Stop "
            "the processes using this prefix and run `python -m layer.ipc clean --prefix ...`"
        )


def bump_generation(mm: mmap.mmap) -> None:
    """Invalidate every process's cached entry indexes (see ``Table.channel_index``)."""
    _END.pack_into(mm, TABLE_GEN, (_END.unpack_from(mm, TABLE_GEN)[0] + 1) & 0xFFFFFFFF)


class Journal:
    """Undo records for the mutation in progress; only ever used by the lock holder."""

    __slots__ = ("_g_saved", "end", "mm")

    def __init__(self, mm: mmap.mmap) -> None:
        self.mm = mm
        self.end = 0
        self._g_saved = False

    def save(self, offset: int, length: int) -> None:
        """Remember ``length`` bytes at ``offset`` before they are changed."""
        mm = self.mm
        at = JOURNAL_OFF + self.end
        step = 16 + ((length + 7) & ~7)
        if at + step > JOURNAL_END:
            raise JournalFull
        _RECORD.pack_into(mm, at, offset, length)
        mm[at + 16 : at + 16 + length] = mm[offset : offset + length]
        self.end += step
        _END.pack_into(mm, JSTATE_OFF, self.end)

    def set_u32(self, offset: int, value: int) -> None:
        """Journal the word at ``offset``, then write ``value`` there (a link or a count)."""
        self.save(offset, 4)
        _END.pack_into(self.mm, offset, value)

    def queue_op(
        self,
        entry: int,
        five: tuple[int, int, int, int, int],
        g5: tuple[int, int, int, int, int],
        link: int,
        link_old: int,
    ) -> None:
        """Journal a queue push/pop in one write (the hot path's equivalent of three saves)."""
        end = self.end
        if end > _QUEUE_OP_LAST:
            raise JournalFull
        mm = self.mm
        _QUEUE_OP.pack_into(mm, JOURNAL_OFF + end, entry, 20, *five, G_OFF, 20, *g5, link, 4,
                            link_old)  # fmt: skip
        self.end = end = end + QUEUE_RECORD_SIZE
        _END.pack_into(mm, JSTATE_OFF, end)

    def three_words(self, a: int, a_old: int, b: int, b_old: int, c: int, c_old: int) -> None:
        """Journal three words whose old values the caller holds, in one write."""
        at = JOURNAL_OFF + self.end
        if at + _THREE_WORDS.size > JOURNAL_END:
            raise JournalFull
        _THREE_WORDS.pack_into(self.mm, at, a, 4, a_old, b, 4, b_old, c, 4, c_old)
        self.end += _THREE_WORDS.size
        _END.pack_into(self.mm, JSTATE_OFF, self.end)

    def register_op(
        self, node: int, entry: int, five: tuple[int, int, int, int, int], counter: int
    ) -> None:
        """Journal a waiter's registration on a reused node in one write."""
        mm = self.mm
        at = JOURNAL_OFF + self.end
        if at + _REGISTER.size > JOURNAL_END:
            raise JournalFull
        _REGISTER.pack_into(mm, at, node, 16, *_NODE_WORDS.unpack_from(mm, node), entry, 20,
                            *five, counter, 4, _END.unpack_from(mm, counter)[0])  # fmt: skip
        self.end += _REGISTER.size
        _END.pack_into(mm, JSTATE_OFF, self.end)

    def save_g(self) -> None:
        """Save the G block (pool heads and counts) once per mutation."""
        if not self._g_saved:
            self.save(G_OFF, G_SIZE)
            self._g_saved = True

    def commit(self) -> None:
        """The mutation is complete: forget the undo records (one word write)."""
        if self.end:
            _END.pack_into(self.mm, JSTATE_OFF, 0)
            self.end = 0
        self._g_saved = False

    def rollback(self) -> None:
        """Restore every saved record, newest first (also used after a crash)."""
        mm = self.mm
        end = _END.unpack_from(mm, JSTATE_OFF)[0]
        if end > JOURNAL_END - JOURNAL_OFF or end % 8:
            raise CorruptJournal(f"length {end}")
        records: list[tuple[int, bytes]] = []
        at = JOURNAL_OFF
        while at < JOURNAL_OFF + end:
            offset, length = _RECORD.unpack_from(mm, at)
            step = 16 + ((length + 7) & ~7)
            fits = (
                G_OFF <= offset <= G_OFF + G_SIZE - length
                or B_BITMAP <= offset <= B_BITMAP + B_SIZE - length
                or HEADER_SIZE <= offset <= len(mm) - length
            )
            if not (0 < length <= _LONGEST and fits) or at + step > JOURNAL_OFF + end:
                raise CorruptJournal(f"a record of {length} bytes at offset {offset}")
            records.append((offset, mm[at + 16 : at + 16 + length]))
            at += step
        if records:
            bump_generation(mm)  # an entry this mutation created (and someone cached) is gone
        for offset, saved in reversed(records):
            mm[offset : offset + len(saved)] = saved
        _END.pack_into(mm, JSTATE_OFF, 0)
        self.end = 0
        self._g_saved = False


class Lock:
    """``with lock:`` holds the segment exclusively; on entry repairs what a dead holder left.

    ``flock`` excludes other processes but not other threads of this one (they share the open
    file description), so ``mutex`` is taken first: the take-ahead return thread
    (``ahead.py``) and the event loop's thread never mutate the segment at once. It is
    re-entrant, so that thread can hold it across a check and the critical section it decides.
    """

    __slots__ = (
        "__weakref__", "_fd", "_redo_flush", "closed", "forked", "journal", "mm", "mutex",
        "recoveries", "usable",
    )  # fmt: skip

    def __init__(self, fd: int, mm: mmap.mmap, redo_flush: Callable[[], None]) -> None:
        self._fd = fd
        self.mm = mm
        self.journal = Journal(mm)
        self._redo_flush = redo_flush
        self.recoveries = 0
        self.forked = False
        self.closed = False
        self.usable = True  # neither: one check on the hot path
        self.mutex = threading.RLock()
        _LOCKS.add(self)

    def close(self) -> None:
        """The layer is closing: from now on every critical section is refused (its file
        descriptor is about to be closed, and the number may be reused by another file).
        A critical section running in another thread ends first: it holds the mutex."""
        with self.mutex:
            self.closed, self.usable = True, False

    def __enter__(self) -> Journal:
        if not self.usable:
            if self.closed:
                raise LayerClosed
            raise RuntimeError(
                "this IPC layer was created before os.fork(): parent and child would share one "
                "lock; create channel layers in the process that uses them"
            )
        self.mutex.acquire()
        try:
            if self.closed:  # closed by another thread while this one waited for the mutex
                raise LayerClosed
            try:
                _flock(self._fd, _LOCK_TRY)
            except BlockingIOError:
                self._wait()
        except BaseException:
            self.mutex.release()
            raise
        if _STATE_WORD(self.mm, JSTATE_OFF)[0]:  # undo records or a flush left behind
            try:
                self._recover()
            except BaseException:  # a corrupt journal: refused, and the lock is not kept
                _flock(self._fd, _LOCK_UN)
                self.mutex.release()
                raise
        return self.journal

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        try:
            if exc_type is not None:
                self.journal.rollback()
            elif self.journal.end:  # else nothing is left to commit (a read, or all committed)
                self.journal.commit()
        finally:
            _flock(self._fd, _LOCK_UN)
            self.mutex.release()

    def _wait(self) -> None:
        """The lock is busy: spin briefly on a non-blocking try, then sleep for it."""
        for _ in range(SPINS):
            try:
                _flock(self._fd, _LOCK_TRY)
                return
            except BlockingIOError:
                pass
        _flock(self._fd, _LOCK_EX)

    def _recover(self) -> None:
        """A holder died mid-mutation: undo it, or finish its flush."""
        self.recoveries += 1
        _END.pack_into(self.mm, RECOVERIES, _END.unpack_from(self.mm, RECOVERIES)[0] + 1)
        flag = JSTATE.unpack_from(self.mm, JSTATE_OFF)[1]
        if flag not in (0, FLUSHING):
            raise CorruptJournal(f"flush flag {flag}")
        self.journal.rollback()
        if flag == FLUSHING:
            self._redo_flush()
            self.end_flush()

    def begin_flush(self) -> None:
        JSTATE.pack_into(self.mm, JSTATE_OFF, 0, FLUSHING)

    def end_flush(self) -> None:
        JSTATE.pack_into(self.mm, JSTATE_OFF, 0, 0)


def _mark_forked() -> None:
    """In a fork child every inherited lock is shared with the parent: refuse to use it."""
    for lock in _LOCKS:
        lock.forked, lock.usable = True, False


_LOCKS: weakref.WeakSet[Lock] = weakref.WeakSet()
os.register_at_fork(after_in_child=_mark_forked)
