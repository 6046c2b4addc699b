"""Flow rules every backend follows, written once: taking ahead, send credit, handing a message
back, and bounded memory.

* **Taking ahead** (docs/redis.md "Guarantees", docs/ipc.md "Taking messages ahead"): a receive
  that goes to storage may take up to ``PREFETCH`` messages more for later receives here, on a
  shared channel only when its receiver keeps receiving (:class:`Streaming`: its previous
  receive here was within ``STREAMING``). Held messages of a shared channel that nobody here
  received for ``RETURN_DELAY`` go back to the front of the channel (:meth:`Streaming.due`);
  expired ones held for process-specific channels are swept every ``PRUNE_EVERY``
  (:class:`Every`, :func:`unexpired`). Where the held messages live and who sends them back
  (an event-loop timer in Redis, a thread in IPC) is each backend's.
* **Send credit** (:class:`Credit`): a send that need not wait for the storage's word on the
  channel's room; granted from the room the storage last showed, at most a window, one per
  send.
* **Handing back** (:func:`hand`, :func:`handed`): a cancelled receive that had already been
  handed a message gives it to the next waiting receive, else it goes first in line again.
* **Bounded memory** (:func:`remember`, :func:`remember_name`): a table of recent names (a
  cache, a streaming or credit table) forgets everything when full, so a process that sees
  endless fresh names (a reply channel per client) keeps a fixed size; a forgotten name costs
  a recomputation or one receive's worth of warm-up.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import Hashable
from typing import TypeVar

PREFETCH = 32  # messages a receive may take ahead of the receives waiting on that channel
STREAMING = 1.0  # a second receive on a shared channel within this many seconds keeps receiving
RETURN_DELAY = 1.0  # seconds a shared channel's message taken ahead waits for a receive here
PRUNE_EVERY = 5.0  # seconds between sweeps of expired messages held for channels nobody receives
REMEMBERED = 10_000  # names a streaming or credit table keeps before it starts afresh

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")
T = TypeVar("T")
E = TypeVar("E", int, float)  # an expiry: monotonic seconds (IPC), epoch milliseconds (Redis)

_NEVER = float("-inf")


def remember(table: dict[K, V], key: K, value: V, most: int) -> None:
    """``table[key] = value``; a table already holding ``most`` other keys is emptied first."""
    if len(table) >= most and key not in table:
        table.clear()
    table[key] = value


def remember_name(names: set[K], name: K, most: int) -> None:
    """``names.add(name)``, with :func:`remember`'s bound."""
    if len(names) >= most:
        names.clear()
    names.add(name)


class Streaming:
    """When this process last received on each name, and which names it keeps receiving on.

    A receive that goes to storage asks :meth:`received` whether to take ahead: yes when the
    previous receive on that name here was within ``STREAMING`` (a consumer loop), no for a
    one-off receive (``async_to_sync``: a fresh event loop per call), which takes only what it
    returns. A receive served from what was taken ahead calls :meth:`touch`.
    """

    __slots__ = ("_last", "_most", "_on")

    def __init__(self, most: int = REMEMBERED) -> None:
        self._last: dict[str, float] = {}
        self._on: set[str] = set()
        self._most = most

    def received(self, name: str, now: float) -> bool:
        """A receive on ``name`` goes to storage at ``now``: whether it keeps receiving."""
        last = self._last.get(name, _NEVER)
        if last is _NEVER and len(self._last) >= self._most:
            self.clear()
        self._last[name] = now
        if now - last < STREAMING:
            self._on.add(name)
            return True
        self._on.discard(name)
        return False

    def touch(self, name: str, now: float) -> None:
        """A receive on ``name`` took a held message (or held ones were kept) at ``now``."""
        last = self._last
        if name not in last and len(last) >= self._most:
            self.clear()
        last[name] = now

    def streaming(self, name: str) -> bool:
        """Whether the last receive on ``name`` that went to storage kept receiving."""
        return name in self._on

    def due(self, name: str, now: float) -> float:
        """Seconds until messages held for ``name`` go back (0: now), by ``RETURN_DELAY``
        without a receive here."""
        return max(0.0, RETURN_DELAY - (now - self._last.get(name, _NEVER)))

    def clear(self) -> None:
        self._last.clear()
        self._on.clear()


class Every:
    """A sweep due at most every ``period`` seconds (``PRUNE_EVERY``)."""

    __slots__ = ("_last", "period")

    def __init__(self, now: float, period: float = PRUNE_EVERY) -> None:
        self.period = period
        self._last = now

    def due(self, now: float) -> bool:
        """Whether a sweep is due at ``now``; if so, the next is ``period`` from now."""
        if now - self._last <= self.period:
            return False
        self._last = now
        return True


def unexpired(held: deque[tuple[T, E]], now: float) -> tuple[deque[tuple[T, E]], int]:
    """``held`` (``(payload, expires)``, oldest first) without what expired by ``now``, and
    how many that was (``held`` itself when none)."""
    kept = deque(item for item in held if item[1] > now)
    dropped = len(held) - len(kept)
    return (kept if dropped else held), dropped


class Credit:
    """Sends each channel may still make without waiting for the storage's word on its room.

    Granted from the room the storage last showed (a reply, a flush), at most ``window``; one
    per send. A send without credit goes to the storage with the real capacity check. One
    process sending to a channel never exceeds its capacity; several may overshoot it by their
    credit each.
    """

    __slots__ = ("_credit", "_most", "window")

    def __init__(self, window: int, most: int = REMEMBERED) -> None:
        self.window = window
        self._credit: dict[str, int] = {}
        self._most = most

    def take(self, channel: str) -> bool:
        """Use one of ``channel``'s credit if it has any."""
        credit = self._credit.get(channel, 0)
        if credit <= 0:
            return False
        self._credit[channel] = credit - 1
        return True

    def grant(self, channel: str, room: int) -> None:
        """The storage showed ``room`` more messages fit in ``channel``: credit that much,
        at most ``window`` (none when ``room`` is not positive)."""
        credit = self._credit
        if room <= 0:
            credit.pop(channel, None)
            return
        if channel not in credit and len(credit) >= self._most:  # remember()'s rule, inline
            credit.clear()
        credit[channel] = room if room < self.window else self.window

    def revoke(self, channel: str) -> None:
        """No more sends to ``channel`` without the capacity check (its reply failed)."""
        self._credit.pop(channel, None)

    def get(self, channel: str) -> int:
        return self._credit.get(channel, 0)

    def clear(self) -> None:
        self._credit.clear()

    def __len__(self) -> int:
        return len(self._credit)


def hand(waiters: deque[asyncio.Future[T]], payload: T) -> bool:
    """Give ``payload`` to the first receive in ``waiters`` still waiting (those done, i.e.
    cancelled, leave the line); False when none is."""
    while waiters:
        waiter = waiters.popleft()
        if not waiter.done():
            waiter.set_result(payload)
            return True
    return False


def handed(waiter: asyncio.Future[T], waiters: deque[asyncio.Future[T]] | None) -> T | None:
    """A receive waiting on ``waiter`` was cancelled: the message it had already been handed
    (the caller gives it back: :func:`hand`, else first in line), or None after taking it out
    of ``waiters``."""
    if waiter.done() and not waiter.cancelled():
        return waiter.result()
    if waiters is not None:
        with contextlib.suppress(ValueError):
            waiters.remove(waiter)
    return None
