"""Which event loop of the process pops each of its inbox lists, and waking other loops.

One loop at a time pops each inbox list (its *popper*), so entries reach the process's inbox
(inbox.py) in list order. The role goes to a connected receiver that finds receives of any
loop waiting on a list nobody pops; it is given up when no receive needs the list any more, or
the loop ends, and the loops still waiting are woken (``call_soon_threadsafe``) to take it.
State shared by every loop, read and changed under the inbox's lock.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from layer.redis.inbox import Inbox

Loop = asyncio.AbstractEventLoop
Poke = Callable[[str | None], None]  # a receiver's ``_wanted``: pop ``key`` (or look again)
INBOX_BATCH = 1000  # entries popped at once from an inbox when streaming, or for a drain


def wake(waiter: asyncio.Future[Any], loop: Loop) -> bool:
    """Resolve ``waiter`` with None from ``loop`` (now, if it is the waiter's, else in the
    waiter's own loop); False when that loop is closed (nobody will ever look)."""
    if waiter.get_loop() is loop:
        if not waiter.done():
            waiter.set_result(None)
        return True
    try:
        waiter.get_loop().call_soon_threadsafe(_look_again, waiter)
    except RuntimeError:  # its loop is closed
        return False
    return True


def _look_again(waiter: asyncio.Future[Any]) -> None:
    if not waiter.done():
        waiter.set_result(None)


def _poke(loop: Loop, poke: Poke, key: str) -> None:
    with contextlib.suppress(RuntimeError):  # closed: nothing to wake
        loop.call_soon_threadsafe(poke, key)


class Poppers:
    """The popper of each inbox list of one shard, and the loops with a receiver to wake."""

    def __init__(self, inbox: Inbox) -> None:
        self._inbox = inbox  # its lock, its receives waiting (per loop) and its drains
        self.of: dict[str, Loop] = {}  # list key -> the loop whose receiver pops it
        self._pokes: dict[Loop, Poke] = {}  # loops with a receive loop running, to wake
        self._ready: set[Loop] = set()  # those whose pop connection was connected last look

    def popping(
        self,
        loop: Loop,
        poke: Poke,
        armed: Iterable[str],
        streaming: Callable[[str], bool],
        ready: bool,
    ) -> dict[str, int]:
        """The inbox lists ``loop``'s receiver pops now, with how many entries to take: those
        receives of any loop wait on, its drain's and ``armed``, that no other live loop pops.
        Lists it no longer needs are given up, and the loops waiting for them woken.

        Only a ``ready`` receiver (connected) takes lists over, and it pops for every loop's
        receives, not only its own: one still to connect gets the lists its own receives need,
        to connect first. A fresh loop per ``async_to_sync`` call connects before it can pop,
        and on a loaded host that outlasts a short receive: when a loop held the role while it
        connected, and a connected loop whose receive had ended popped nothing, no loop popped."""
        want: dict[str, int] = {}
        inbox, popper = self._inbox, self.of
        with inbox.lock:
            waiting, drains = inbox.waiting, inbox.drains
            if self._pokes.get(loop) is not poke:
                self._pokes[loop] = poke
            if ready:
                self._ready.add(loop)
            else:
                self._ready.discard(loop)
            needed = [
                key for key, counts in waiting.items() if counts and (ready or loop in counts)
            ]
            needed += armed
            if drains:
                needed += [key for key, drain in drains.items() if drain.owner is loop]
            for key in needed:
                other = popper.get(key)
                if key in want or (other not in (None, loop) and not other.is_closed()):
                    continue
                if ready:
                    popper[key] = loop
                counts = waiting.get(key)
                total = sum(counts.values()) if counts else 0
                bulk = not total or key in drains or streaming(key)
                want[key] = INBOX_BATCH if bulk else total
            if ready and len(popper) == len(want):  # (the usual case: one loop pops them all)
                return want
            released = [key for key, other in popper.items() if other is loop and key not in want]
            woken = self._release(released, loop)
        self._wake(woken)
        return want

    def popped_elsewhere(self, key: str, loop: Loop) -> bool:
        """Whether another live loop pops ``key`` (a receive here need not wake this loop's
        pop: that loop's brings its entries, and this one is poked when it stops)."""
        popper = self.of.get(key)
        return popper is not None and popper is not loop and not popper.is_closed()

    def summon(self, key: str, loop: Loop) -> None:
        """A receive of ``loop``, whose pop is not connected, waits on ``key`` that no live loop
        pops: wake the connected loops, one of which takes it. Idle, or blocked on other
        lists, they would not look (or only at their pop's timeout), and on a loaded host
        this loop's connect outlasts a short receive: no receive of such loops got anything."""
        with self._inbox.lock:
            if self.popped_elsewhere(key, loop):
                return
            woken = [(o, key) for o in self._ready if o is not loop and not o.is_closed()]
        self._wake(woken)

    def leave(self, loop: Loop) -> None:
        """``loop``'s receive loop stopped: it pops no more; the others waiting are woken."""
        inbox = self._inbox
        with inbox.lock:
            self._pokes.pop(loop, None)
            self._ready.discard(loop)
            woken = self._release([k for k, p in self.of.items() if p is loop], loop)
            for counts in inbox.waiting.values():
                counts.pop(loop, None)
        self._wake(woken)

    def others_live(self, loop: Loop) -> bool:
        """Whether a live loop besides ``loop`` receives here or pops (under the lock)."""
        loops = set(self._pokes) | set(self.of.values())
        loops.update(other for counts in self._inbox.waiting.values() for other in counts)
        return any(other is not loop and not other.is_closed() for other in loops)

    def prune(self) -> None:
        """Forget loops that are closed (under the lock)."""
        self._pokes = {lp: p for lp, p in self._pokes.items() if not lp.is_closed()}
        self._ready = {lp for lp in self._ready if not lp.is_closed()}
        self.of = {k: lp for k, lp in self.of.items() if not lp.is_closed()}

    def _release(self, keys: list[str], loop: Loop) -> list[tuple[Loop, str]]:
        """Give up popping ``keys``; the other live loops that need them (under the lock)."""
        woken = []
        for key in keys:
            del self.of[key]
            needing = set(self._inbox.waiting.get(key, {}))
            drain = self._inbox.drains.get(key)
            if drain is not None:
                needing.add(drain.owner)
            woken += [(o, key) for o in needing if o is not loop and o in self._pokes]
        return woken

    def _wake(self, woken: list[tuple[Loop, str]]) -> None:
        for other, key in woken:
            _poke(other, self._pokes.get(other) or (lambda key: None), key)
