"""The receive multiplexer: one loop and one blocking connection per shard for every receive.

Each ``receive()`` registers a waiter in a local mailbox; the loop pops for all channels with
waiters at once (``BLMPOP`` over all their lists, taking turns; a Lua multi-pop takes a burst
from many lists in one call) and hands entries to waiters. A process's own channels
(``prefix!...``) share one inbox list, popped in bulk and demultiplexed here. Shared channels
are popped atomically (each entry goes to exactly one process), at most ``waiters + prefetch``
at a time; entries left in a mailbox that nobody waits on any more go back to the front of
their list through this same connection, so the order seen by the next receiver is kept. A new
channel wakes a blocked ``BLMPOP`` by pushing to this process's wake list. What was popped and
not yet received, and the receives waiting, are the mailboxes' (``mailboxes.py``).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from redis.exceptions import RedisError

from layer.exceptions import AccessRefused
from layer.flow import PREFETCH, Every
from layer.logs import Throttled
from layer.redis.connection import Pipe
from layer.redis.entries import Popped
from layer.redis.inbox import Inbox
from layer.redis.mailboxes import Mailboxes
from layer.redis.popconn import PopConnection
from layer.redis.returns import Returns, lpushes
from layer.redis.scripts import MPOP
from layer.redis.shard_errors import unavailable

log = logging.getLogger(__name__)

ARMED_FOR = 30.0  # seconds this process keeps popping its inbox after its last receive on it
_MAX_BACKOFF = 2.0
_REFUSED_BACKOFF = 30.0
_MALFORMED = "dropped a malformed entry %.40r on %s"
_SETTLE_TURNS = 3  # loop turns the next pop waits for sends to go out with it, after a pop


class Receiver:
    """Receives for every channel of one shard in this process."""

    def __init__(
        self,
        pipe: Pipe,
        wake_key: str,
        *,
        socket_timeout: float,
        block_timeout: float,
        expiry: float,
        on_expired: Callable[[int], None],
        inbox: Inbox,
    ) -> None:
        self._loop = asyncio.get_running_loop()  # one per event loop, like its pipe
        self.pipe = pipe
        self._wake_key = wake_key
        self._on_expired = on_expired
        self.boxes = Mailboxes(expiry, on_expired, self._send_back)  # shared channels'
        self.inbox = inbox  # this process's own channels' (every loop's)
        self._routes: dict[str, str] = {}  # a shared channel's list key -> the channel
        self._armed: dict[str, float] = {}  # inbox key -> last receive on it (monotonic)
        self._returns = Returns()
        self._blocking: set[str] | None = None
        self._woken = False
        self._idle: asyncio.Future[None] | None = None
        self._task: asyncio.Task[None] | None = None
        self._conn = PopConnection(pipe, socket_timeout, block_timeout, wake_key)
        self._popped = False  # the last pop returned entries (more may be waiting)
        self._last_popped: bytes | None = None  # the list it took them from
        self._closed = False
        self._malformed = Throttled(log)  # entries no layer wrote: a flood costs a few lines

    # -- the receive side ---------------------------------------------------------------------

    async def pop(self, channel: str, key: str) -> Popped:
        """The next entry of shared ``channel`` (its list ``key``)."""
        boxes = self.boxes
        box = boxes.boxes.get(channel)
        if box is not None and box.buffer:  # the fast path: popped already
            payload = boxes.take_from(box)
            if payload is not None:
                return payload
        if box is None:
            box = boxes.box(channel, key)
            self._routes[key] = channel
        boxes.receives.received(key, time.monotonic())
        payload = boxes.take_from(box)
        if payload is not None:
            return payload
        waiter: asyncio.Future[bytes] = self._loop.create_future()
        box.waiters.append(waiter)
        boxes.waiting[key] = boxes.waiting.get(key, 0) + 1
        self._wanted(key)
        try:
            return await waiter
        except asyncio.CancelledError:
            boxes.cancelled(channel, box, waiter)
            raise

    async def own(self, channel: str, key: str) -> Popped:
        """A receive on a channel of this process's inbox ``key``: from what any loop of the
        process popped (inbox.py); woken with None when another loop's pop brought one."""
        # Bulk pops (an armed inbox) only for a receiver that keeps receiving here: a one-off
        # receive (e.g. async_to_sync, a fresh event loop per call) pops what it needs.
        now = time.monotonic()
        if self.boxes.receives.received(key, now):
            self._armed[key] = now
        inbox, loop = self.inbox, self._loop
        while True:
            got = inbox.take_or_wait(channel, key, loop)
            if not isinstance(got, asyncio.Future):
                return got
            self._wanted(key)
            if not self._conn.connected:  # a connected loop may pop it sooner (poppers.py)
                inbox.poppers.summon(key, loop)
            try:
                payload = await got
            except asyncio.CancelledError:
                inbox.cancelled(channel, key, got, loop)
                raise
            if payload is not None:
                return payload

    async def drain(self, key: str) -> list[tuple[int, bytes, bytes]]:
        """Wait for entries of this process's inbox ``key`` and take them all:
        ``(expires_at_ms, local parts, payload)``, unexpired, in list order.

        For a caller that routes them on itself (``LocalRedisChannelLayer`` moves them into
        its host's IPC queues): from the first drain on, the inbox is popped (by some loop of
        the process) while the loop of the latest drain lives, and its entries go to the
        drain, not to per-channel mailboxes. Cancel-safe: what was popped stays for the next
        drain (or goes back at ``close()``)."""
        inbox, loop = self.inbox, self._loop
        while True:
            got = inbox.drained(key, loop)
            if not isinstance(got, asyncio.Future):
                return got
            self._wanted(key)
            try:
                await got
            finally:
                inbox.drain_done(key, got)

    def _send_back(self, key: str, entries: list[bytes]) -> None:
        """Push ``entries`` back to the front of ``key`` with the next pop."""
        self._returns.add([(key, entries)])
        self._wanted(None)

    def _wanted(self, key: str | None) -> None:
        """A receiver needs ``key`` (or returns are due): start, un-idle or wake the loop."""
        if self._task is None:
            self._task = asyncio.ensure_future(self._run())
        if self._idle is not None and not self._idle.done():
            self._idle.set_result(None)
        blocking = self._blocking
        if (
            blocking is not None
            and (key is None or key not in blocking)
            and not self._woken
            and (key is None or not self.inbox.poppers.popped_elsewhere(key, self._loop))
        ):
            self._woken = True
            self._conn.wake()

    # -- the loop -----------------------------------------------------------------------------

    def _want(self) -> dict[str, int]:
        receives = self.boxes.receives
        want = {
            key: count + PREFETCH if receives.streaming(key) else count
            for key, count in self.boxes.waiting.items()
            if count > 0
        }
        if self._armed:  # keep a pop waiting on our own inboxes: replies land without a write
            now = time.monotonic()
            for key, since in list(self._armed.items()):
                if now - since > ARMED_FOR:
                    del self._armed[key]
        # The inboxes this loop pops for the whole process (inbox.py: one loop at a time each).
        want.update(
            self.inbox.poppers.popping(
                self._loop, self._wanted, self._armed, receives.streaming, self._conn.connected
            )
        )
        return want

    async def _run(self) -> None:
        try:
            await self._pop_until_closed()
        except asyncio.CancelledError:
            # The loop ends (or close()): its due replies are read (popconn.py); another loop
            # of the process pops the inboxes now, and shared channels' entries go back.
            self.inbox.poppers.leave(self._loop)
            await self._push_back()
            await self._conn.close()
            raise

    async def _push_back(self) -> None:
        """Push what this loop holds for shared channels back to their lists, on its own
        connection, as the loop ends (other loops may be receiving there; not retried: at
        most once). Not connected: they wait for ``close()`` or the next loop (:meth:`adopt`)."""
        returns = self.leftovers()
        if not returns or not self._conn.connected:
            self._returns.add(returns)
            return
        try:
            await self._conn.run(lpushes(returns))
        except (RedisError, OSError) as exc:
            log.warning(
                "%d entries popped ahead were lost: %s", sum(len(es) for _, es in returns), exc
            )

    async def _pop_until_closed(self) -> None:
        backoff = 0.05
        loop = asyncio.get_running_loop()
        sweeps = Every(loop.time())
        me = asyncio.current_task()
        while not self._closed:
            if me is not None and me.cancelling():
                # Cancelled, but an awaited library swallowed it (a timeout in redis-py's
                # connect() on Python 3.11): stop as asked, or a closing loop waits forever.
                raise asyncio.CancelledError
            if sweeps.due(loop.time()):
                self.prune()
            want = self._want()
            if not want and not self._returns:
                self._idle = loop.create_future()
                await self._idle
                continue
            try:
                if await self._conn.ensure():
                    want = self._want()  # receivers came and went while it connected
                replies = await self._fetch(want)
            except (RedisError, OSError) as exc:  # ShardUnavailable is an OSError
                self._blocking = None
                await self._conn.close()
                error = unavailable(self.pipe.spec, exc)
                log.warning("receiving failed (retrying in %.2f s): %s", backoff, error)
                await asyncio.sleep(backoff)
                # A refusal (a wrong password) lasts until someone fixes the configuration:
                # one line every half minute, not every two seconds.
                most = _MAX_BACKOFF if not isinstance(error, AccessRefused) else _REFUSED_BACKOFF
                backoff = min(backoff * 2, most)
                continue
            backoff = 0.05
            for key, entries in replies:
                self._dispatch(key, entries)
            if replies:
                # Let the receivers just woken run first: the sends they queue then go out in
                # the same write as the next pop (on a busy host every write costs a context
                # switch). A few turns, until something is queued: what they post for the end
                # of their turn (a batch of replies) is queued a turn later, and what answering
                # them brings in (a client's next request) a turn or two after that.
                for _ in range(_SETTLE_TURNS):
                    await asyncio.sleep(0)
                    if self.pipe.queued():
                        break

    async def _fetch(self, want: dict[str, int]) -> list[tuple[bytes, list[bytes]]]:
        """Return entries already queued; block for new ones only when there are none."""
        commands = lpushes(self._returns.take())
        # Several lists with entries (a burst): one Lua call takes from all of them. Otherwise
        # BLMPOP alone, which returns at once when any list has entries: a second call before
        # every blocking pop would double the round trips of a process waiting on two lists
        # (a worker: the work channel and its own inbox).
        many = len(want) > 2 and self._popped
        if many:
            commands.append(("EVALSHA", MPOP.sha, len(want), *want, *want.values()))
        if commands:
            # Not retried when they fail: the pushes may have run (at most once, never twice).
            try:
                got = await self._conn.run(commands)
            except asyncio.CancelledError:
                late = self._conn.late()
                if many and len(late) == len(commands) and late[-1]:
                    for key, entries in zip(late[-1][::2], late[-1][1::2], strict=True):
                        self._hold(key, entries)
                raise
            if many and got[-1]:  # key, entries, key, entries...
                return list(zip(got[-1][::2], got[-1][1::2], strict=True))
            want = self._want()  # receivers came and went while those ran
        self._popped = False
        if not want:
            return []
        self._blocking, self._woken = set(want), False
        try:
            reply = await self._conn.blocking_pop(want, self._last_popped)
        except asyncio.CancelledError:
            for late in self._conn.late():
                if late:
                    self._hold(*late)
            raise
        finally:
            self._blocking = None
        if reply is None:
            return []
        self._popped, self._last_popped = True, reply[0]
        return [(reply[0], reply[1])]

    def _hold(self, raw_key: bytes, entries: list[bytes]) -> None:
        """Entries popped as the loop stops: an inbox's stay in this process (inbox.py); a
        shared channel's go back with the leftovers, behind older ones going back to the same
        list (the first pushed to the front ends up last)."""
        key = raw_key.decode()
        if key == self._wake_key:
            return
        if key.endswith("!"):
            self._log_malformed(key, self.inbox.deliver(key, entries, self._loop))
            return
        self._returns.add([(key, entries)])

    def _dispatch(self, raw_key: bytes, entries: list[bytes]) -> None:
        key = raw_key.decode()
        if key.endswith("!"):
            self._log_malformed(key, self.inbox.deliver(key, entries, self._loop))
            return
        channel = self._routes.get(key)
        if channel is None:
            if key != self._wake_key:  # not ours to keep: back to the front of its list
                self._returns.add([(key, entries)])
            return
        entries = self._returns.ahead_of(key, entries)  # those sent back are older
        self._log_malformed(key, self.boxes.deliver(key, channel, entries))

    def _log_malformed(self, key: str, malformed: list[bytes]) -> None:
        for entry in malformed:  # not written by this layer: skipped, and the loop goes on
            self._malformed("entry", logging.ERROR, _MALFORMED, entry, key)

    def prune(self) -> None:
        """Drop expired entries held for process-specific channels nobody is receiving on,
        and mailboxes left empty."""
        used = self.boxes.prune()
        self.inbox.prune()
        self._routes = {key: r for key, r in self._routes.items() if key in used}

    def clear(self) -> None:
        """Forget entries popped but not yet received (``flush()``)."""
        self.boxes.clear()
        self.inbox.clear()
        self._returns.take()

    def leftovers(self) -> list[tuple[str, list[bytes]]]:
        """Take every shared channel's entry popped here that no receive has taken, as list
        entries again, to go back to the front of their lists: the loop is closing
        (``close_pools()``, or a loop of ``async_to_sync`` gone), and the receive they wait
        for may come in another loop or process."""
        return self._returns.take() + self.boxes.leftovers()

    def adopt(self, returns: list[tuple[str, list[bytes]]]) -> None:
        """Push ``returns`` (the leftovers of a closed loop's receiver) back, from this loop."""
        if returns:
            self._returns.add(returns)
            self._wanted(None)

    async def close(self) -> None:
        """Stop the loop; every entry popped but not received goes back to its list (an
        inbox's only when no other loop of the process pops it: see Inbox.give_back)."""
        self._closed = True
        if self._task is not None:
            self._task.cancel()
            await asyncio.wait([self._task])  # it reads the replies due first (popconn.py)
        why = f"Redis shard {self.pipe.spec.name}: closed while this receive waited"
        self.boxes.fail(why)
        self.inbox.fail(self._loop, why)
        returns = self.leftovers() + self.inbox.give_back(self._loop)
        pushes = [self.pipe.call(*command) for command in lpushes(returns)]
        await asyncio.gather(*pushes, return_exceptions=True)
        self.inbox.poppers.leave(self._loop)  # after the pushes: no other loop popped those lists
        await self._conn.close()
