"""The sender's outbox: sends admitted against credit, pushed many per critical section.

A send normally takes the segment lock, journals and commits, and may ring a doorbell: ~8 µs
of which the payload copy is a small part. A send that follows another send of the same
instance (a producer loop, a burst; after a receive the layer pushes directly, so ping-pong
gains no latency) is instead held here while the last flush showed room for it (*credit*),
and the held sends go into the segment
together: one lock round trip, one journal record per run of sends to one channel, at most one
doorbell per woken process. The outbox is flushed when it holds ``WINDOW`` messages or
``BUDGET`` bytes (synchronously, inside the send that filled it), at the end of the event-loop
turn otherwise (``loop.call_soon``), and before anything else this instance does to the segment
(a send without credit, a receive, a group send, stats, flush, close), so one instance's
operations reach the segment in the order they were made.

Credit (``layer.flow.Credit``, the Redis layer's rule) keeps ``ChannelFull`` honest. A
channel's credit is half the room its capacity had at the last flush, at most ``WINDOW``; a
send without credit is pushed at once with the real
capacity check (and raises). One process sending to a channel therefore never exceeds its
capacity; several processes sending to one channel may overshoot it by their credit, as the
Redis layer's pipelined sends do. Slots are credited the same way (half the free slots seen):
a segment that fills up anyway, because other processes filled it meanwhile, drops the
credited messages that no longer fit and counts them in ``dropped_full``.

At-most-once: a message admitted here but not yet flushed is lost if this process dies before
the end of its event-loop turn, as an unsent pipelined Redis command is.
"""

from __future__ import annotations

from collections.abc import Callable

from layer.flow import Credit
from layer.ipc.journal import Journal
from layer.ipc.queues import Queues
from layer.ipc.table import Key

WINDOW = 64  # messages per flush, and the most credit a channel gets
BUDGET = 256 * 1024  # payload bytes that make a flush due

Item = tuple[str, Key, bytes]


class Outbox:
    """Admitted sends not yet in the segment, and what each channel may still take."""

    __slots__ = (
        "cached",
        "credit",
        "free",
        "fresh",
        "items",
        "loop_token",
        "n_slots",
        "room",
        "size",
        "thread",
        "top",
    )

    def __init__(self, n_slots: int, top_block: int) -> None:
        self.items: list[Item] = []
        self.size = 0  # payload bytes in ``items``
        self.credit = Credit(WINDOW)
        self.room = 0  # slots that admitted sends may still take before a flush
        self.free = 0  # free slots at the last flush, less what was admitted since
        self.cached: list[int] = []  # blocks cached per order then, less those admitted
        self.fresh = 0  # top-order blocks never used then, less those admitted
        self.n_slots = n_slots  # the arena's
        self.top = top_block  # slots in the largest block (extent)
        self.loop_token: object = None  # the loop a flush is scheduled on (None: none is)
        self.thread = 0  # the thread whose sends are held (whose loop flushes them)

    def admit(self, channel: str, key: Key, payload: bytes, slots: int, thread: int) -> bool:
        """Hold a send for the next flush if credit allows; False means "push it now".

        Only behind sends held by the same ``thread``: those of another thread's event loop
        wait for the end of its turn, which may be long (an ``async_to_sync`` caller blocked,
        a busy loop), and a send must not wait for another thread's loop."""
        if self.items and thread != self.thread:
            return False
        if slots > self.room or (slots > 1 and not self._fits(slots)):
            return False
        if not self.credit.take(channel):
            return False
        self.thread = thread
        self.room -= slots
        self.free -= slots
        self.items.append((channel, key, payload))
        self.size += len(payload)
        return True

    def _fits(self, slots: int) -> bool:
        """Whether a message of ``slots`` (more than one) is sure to find its blocks at the
        flush, however fragmented the free space: a block of its order cached at the last
        look, else top-order blocks never used yet, else (with ``F`` free slots left of ``N``
        and blocks of ``b`` slots) ``F > N - N/b``, which leaves one of the ``N/b`` aligned
        blocks wholly free (were each touched, ``N/b`` slots would be in use). A held send
        that finds no room at the flush is dropped, as its sender has returned: counting free
        slots alone, a lone sender of large messages into a filling segment lost some (the
        space was there, in pieces)."""
        if slots <= self.top:  # one extent, of the order whose blocks have ``slots`` slots
            order = slots.bit_length() - 1
            if self.cached[order]:
                self.cached[order] -= 1
                return True
        need = -(-slots // self.top)  # top blocks it takes at most from the untouched part
        if need <= self.fresh:
            self.fresh -= need
            return True
        block = 1 << (min(slots, self.top) - 1).bit_length()
        return self.free - slots >= self.n_slots - self.n_slots // block

    def seen(self, queues: Queues) -> None:
        """Look at the segment's free space (under the lock, after a flush or a push)."""
        self.free, self.cached, self.fresh = queues.blocks.space()
        self.room = self.free // 2

    def discard(self) -> None:
        """Forget the held sends (a flush of the whole layer is about to empty their queues)."""
        self.items.clear()
        self.size = 0

    def due(self) -> bool:
        return len(self.items) >= WINDOW or self.size >= BUDGET

    def flush(
        self,
        j: Journal,
        queues: Queues,
        expires: float,
        capacity_of: Callable[[str], int],
        wake: list[int],
    ) -> None:
        """Push every held send, one committed run per channel stretch (lock held)."""
        items, self.items, self.size = self.items, [], 0
        if not items:  # another thread's flush (a loop of its own) took them first
            return
        channel, key, payload = items[0]
        run = [payload]
        for item in items[1:]:
            if item[0] == channel:
                run.append(item[2])
                continue
            self._push_run(j, queues, channel, key, run, expires, capacity_of, wake)
            channel, key, payload = item
            run = [payload]
        self._push_run(j, queues, channel, key, run, expires, capacity_of, wake)
        self.seen(queues)

    def _push_run(
        self,
        j: Journal,
        queues: Queues,
        channel: str,
        key: Key,
        run: list[bytes],
        expires: float,
        capacity_of: Callable[[str], int],
        wake: list[int],
    ) -> None:
        """One stretch of sends to ``channel``: one committed mutation, then fresh credit."""
        count = queues.push_run(j, key, run, expires, wake)
        j.commit()
        self.refill(channel, capacity_of(channel), count)

    def refill(self, channel: str, capacity: int, count: int) -> None:
        """``channel`` holds ``count`` messages now: credit half the room left."""
        self.credit.grant(channel, (capacity - count) // 2)
