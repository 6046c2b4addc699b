"""The receive multiplexer: one loop and one blocking connection per shard for every receive.

Each ``receive()`` registers a waiter in a local mailbox; the loop pops for all channels with
waiters at once (``BLMPOP`` over all their lists, taking turns; a Lua multi-pop takes a burst
from many lists in one call) and hands entries to waiters. A process's own channels
(``prefix!...``) share one inbox list, popped in bulk and demultiplexed here. Shared channels
are popped atomically (each entry goes to exactly one process), at most ``waiters + prefetch``
at a time; entries left in a mailbox that nobody waits on any more go back to the front of
their list through this same connection, so the order seen by the next receiver is kept. A new
channel wakes a blocked ``BLMPOP`` by pushing to this process's wake list.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

from redis.exceptions import RedisError

from layer.exceptions import AccessRefused
from layer.flow import PREFETCH, RETURN_DELAY, Every, Streaming, hand, handed, unexpired
from layer.messages import Message
from layer.redis.connection import Arg, Pipe, unavailable
from layer.redis.entries import Mailbox, Popped, make_entry, split_entry
from layer.redis.popconn import PopConnection
from layer.redis.scripts import MPOP

log = logging.getLogger(__name__)

INBOX_BATCH = 1000  # entries popped at once from this process's own inbox, when streaming
ARMED_FOR = 30.0  # seconds this process keeps popping its inbox after its last receive on it
_MAX_BACKOFF = 2.0
_REFUSED_BACKOFF = 30.0
_SETTLE_TURNS = 3  # loop turns the next pop waits for sends to go out with it, after a pop
_IMMUTABLE = frozenset({str, bytes, int, float, bool, type(None)})


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
        open_payload: Callable[[bytes], Message],
        seal_message: Callable[[Message], bytes],
    ) -> None:
        self._loop = asyncio.get_running_loop()  # one per event loop, like its pipe
        self._expiry = expiry
        self.pipe = pipe
        self._wake_key = wake_key
        self._block_timeout = block_timeout
        self._on_expired = on_expired
        self._open = open_payload
        self._seal = seal_message  # the inverse, for a fan-out message decoded once (_shared)
        self._mailboxes: dict[str, Mailbox] = {}
        self._routes: dict[str, str] = {}  # list key -> channel (shared) or routing prefix
        self._waiting: dict[str, int] = {}  # list key -> receivers waiting on it
        self._armed: dict[str, float] = {}  # inbox key -> last receive on it (monotonic)
        self._receives = Streaming()  # list keys' last receives here, which keep receiving
        self._returns: list[tuple[str, list[bytes]]] = []
        self._blocking: set[str] | None = None
        self._woken = False
        self._idle: asyncio.Future[None] | None = None
        self._task: asyncio.Task[None] | None = None
        self._conn = PopConnection(pipe, socket_timeout, block_timeout)
        self._popped = False  # the last pop returned entries (more may be waiting)
        self._last_popped: bytes | None = None  # the list it took them from
        self._closed = False

    # -- the receive side ---------------------------------------------------------------------

    def take(self, channel: str) -> Popped | None:
        """An entry already popped for ``channel``, if any (the fast path of a receive)."""
        box = self._mailboxes.get(channel)
        return None if box is None or not box.buffer else self._take(box)

    async def pop(self, channel: str, key_prefix: str, routing: str) -> Popped:
        box = self._mailboxes.get(channel)
        if box is not None and box.buffer:  # the fast path: popped already
            payload = self._take(box)
            if payload is not None:
                return payload
        if box is None:
            key = key_prefix + routing
            box = self._mailbox(channel, key)
            self._routes[key] = routing
        key = box.key
        # Bulk pops (prefetch, an armed inbox) only for a receiver that keeps receiving here:
        # a one-off receive (e.g. async_to_sync, a fresh event loop per call) pops what it
        # needs, so nothing is left in a loop that is about to close.
        now = time.monotonic()
        if self._receives.received(key, now) and box.inbox:
            self._armed[key] = now
        payload = self._take(box)
        if payload is not None:
            return payload
        waiter: asyncio.Future[Popped] = self._loop.create_future()
        box.waiters.append(waiter)
        self._waiting[key] = self._waiting.get(key, 0) + 1
        self._wanted(key)
        try:
            return await waiter
        except asyncio.CancelledError:
            waiting = len(box.waiters)
            payload = handed(waiter, box.waiters)
            if payload is not None:
                # Taken for us but we are gone: first in line again (in the live mailbox).
                box = self._mailboxes.setdefault(channel, box)
                self._give(box, payload, front=True)
            else:
                self._waiting[key] -= waiting - len(box.waiters)
            self._settle(box)
            raise

    def _take(self, box: Mailbox) -> Popped | None:
        buffer = box.buffer
        if not buffer:
            return None
        if not box.inbox:
            self._receives.touch(box.key, time.monotonic())
        payload, expires_at = buffer.popleft()
        if expires_at <= time.time() * 1000:  # rare: drop every expired head, then look again
            self._on_expired(1)
            return self._take(box)
        if not buffer:
            self._settle(box)
        return payload.copy() if type(payload) is dict else payload  # see _shared

    def _give(self, box: Mailbox, payload: Popped, front: bool = False, expires: int = 0) -> None:
        """Hand ``payload`` to the first live waiter, else keep it (at the front if requeued)."""
        waiters = box.waiters
        waiting = len(waiters)
        given = hand(waiters, payload.copy() if type(payload) is dict else payload)
        self._waiting[box.key] -= waiting - len(waiters)
        if given:
            return
        expires = expires or int((time.time() + self._expiry) * 1000)
        if front:
            box.buffer.appendleft((payload, expires))
        else:
            box.buffer.append((payload, expires))

    def _settle(self, box: Mailbox) -> None:
        """Send a shared channel's entries that nobody here waits for back, soon.

        Empty mailboxes stay until :meth:`prune` (a receiver that keeps receiving reuses one)."""
        if box.waiters or not box.buffer:
            return
        if not box.inbox and not box.returning:
            box.returning = True
            self._loop.call_later(RETURN_DELAY, self._return, box)

    def _return(self, box: Mailbox) -> None:
        box.returning = False
        if box.waiters or not box.buffer:
            return
        left = self._receives.due(box.key, time.monotonic())
        if left:  # still being received from: look again later
            box.returning = True
            self._loop.call_later(left, self._return, box)
            return
        self._returns.append((box.key, self._entries(box)))
        self._settle(box)
        self._wanted(None)

    def _wanted(self, key: str | None) -> None:
        """A receiver needs ``key`` (or returns are due): start, un-idle or wake the loop."""
        if self._task is None:
            self._task = asyncio.ensure_future(self._run())
        if self._idle is not None and not self._idle.done():
            self._idle.set_result(None)
        blocking = self._blocking
        if blocking is not None and (key is None or key not in blocking) and not self._woken:
            self._woken = True
            self.pipe.fire("RPUSH", self._wake_key, b"1")
            self.pipe.fire("PEXPIRE", self._wake_key, 60_000)

    # -- the loop -----------------------------------------------------------------------------

    def _want(self) -> dict[str, int]:
        want = {
            key: (INBOX_BATCH if self._routes[key].endswith("!") else count + PREFETCH)
            if self._receives.streaming(key)
            else count
            for key, count in self._waiting.items()
            if count > 0
        }
        if self._armed:  # keep a pop waiting on our own inboxes: replies land without a write
            now = time.monotonic()
            for key, since in list(self._armed.items()):
                if now - since > ARMED_FOR:
                    del self._armed[key]
                else:
                    want.setdefault(key, INBOX_BATCH)
        return want

    async def _run(self) -> None:
        backoff = 0.05
        loop = asyncio.get_running_loop()
        sweeps = Every(loop.time())
        while not self._closed:
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
        returns, self._returns = self._returns, []
        commands: list[tuple[Any, ...]] = [
            ("LPUSH", key, *reversed(entries)) for key, entries in returns
        ]
        # Several lists with entries (a burst): one Lua call takes from all of them. Otherwise
        # BLMPOP alone, which returns at once when any list has entries: a second call before
        # every blocking pop would double the round trips of a process waiting on two lists
        # (a worker: the work channel and its own inbox).
        many = len(want) > 2 and self._popped
        if many:
            commands.append(("EVALSHA", MPOP.sha, len(want), *want, *want.values()))
        if commands:
            try:
                got = await self._conn.run(commands)
            except BaseException:
                self._returns = returns + self._returns  # try again on the next connection
                raise
            if many and got[-1]:
                flat: list[Any] = got[-1]
                return [(flat[i], flat[i + 1]) for i in range(0, len(flat), 2)]
            want = self._want()  # receivers came and went while those ran
        self._popped = False
        if not want:
            return []
        self._blocking, self._woken = set(want), False
        try:
            reply = await self._conn.blocking_pop(self._blocking_pop(want))
        finally:
            self._blocking = None
        if reply is None:
            return []
        self._popped, self._last_popped = True, reply[0]
        return [(reply[0], reply[1])]

    def _blocking_pop(self, want: dict[str, int]) -> tuple[Arg, ...]:
        """BLMPOP over the wake list and ``want``. The list popped last goes last (BLMPOP takes
        from the first list with entries: no list starves another), and a shared channel is
        never popped past its own count (one COUNT serves every list)."""
        last = self._last_popped.decode() if self._last_popped else None
        keys = [self._wake_key, *(k for k in want if k != last)]
        if last in want:
            keys.append(last)
        shared = [n for key, n in want.items() if not self._routes[key].endswith("!")]
        return (
            "BLMPOP",
            self._block_timeout,
            len(keys),
            *keys,
            "LEFT",
            "COUNT",
            max(shared or want.values()),
        )

    def _dispatch(self, raw_key: bytes, entries: list[bytes]) -> None:
        key = raw_key.decode()
        routing = self._routes.get(key)
        if routing is None:
            if key != self._wake_key:  # not ours to keep: back to the front of its list
                self._returns.append((key, entries))
            return
        now = time.time() * 1000
        expired = 0
        inbox = routing.endswith("!")
        if not inbox and any(k == key for k, _ in self._returns):
            # Entries sent back but not yet pushed are older than these: keep them first.
            entries = [e for k, es in self._returns if k == key for e in es] + entries
            self._returns = [(k, es) for k, es in self._returns if k != key]
        boxes_of: dict[bytes, list[Mailbox]] = {}  # a group's entries repeat one local part
        for entry in entries:
            try:
                expires_at, local, payload = split_entry(entry)
                if expires_at <= now:
                    expired += 1
                    continue
                boxes = boxes_of.get(local)
                if boxes is None:
                    names = local.decode().split(",") if inbox else ("",)
                    boxes = boxes_of[local] = [self._mailbox(routing + n, key) for n in names]
            except ValueError:  # not written by this layer: skip it, keep the loop alive
                log.error("dropped a malformed entry %.40r on %s", entry, key)
                continue
            shared = self._shared(payload) if len(boxes) > 1 else payload
            for box in boxes:
                if box.waiters:
                    self._give(box, shared, expires=expires_at)
                else:  # nobody waiting yet (a busy receiver): keep it for the next receive
                    box.buffer.append((shared, expires_at))
                if not inbox:
                    self._settle(box)
        if expired:
            self._on_expired(expired)

    def _mailbox(self, channel: str, key: str) -> Mailbox:
        box = self._mailboxes.get(channel)
        if box is None:
            box = self._mailboxes[channel] = Mailbox(channel, key, key.endswith("!"))
        return box

    def _shared(self, payload: bytes) -> Popped:
        """A fan-out entry's payload for all its local members: decoded once when a shallow
        copy of the message is a whole one (every value immutable; each receiver gets its own
        copy, see :meth:`_take`), else the bytes, decoded by each receive."""
        try:
            message = self._open(payload)
        except Exception:  # undecryptable or malformed: each receive raises, naming its channel
            return payload
        return message if _IMMUTABLE.issuperset(map(type, message.values())) else payload

    def prune(self) -> None:
        """Drop expired entries held for process-specific channels nobody is receiving on,
        and mailboxes left empty."""
        for box in list(self._mailboxes.values()):
            if box.inbox and not box.waiters:
                self._take_expired(box)
            if not box.waiters and not box.buffer and not box.returning:
                del self._mailboxes[box.channel]
        self._waiting = {key: n for key, n in self._waiting.items() if n}
        used = {box.key for box in self._mailboxes.values()} | set(self._armed) | set(self._waiting)
        self._routes = {key: r for key, r in self._routes.items() if key in used}

    def _take_expired(self, box: Mailbox) -> None:
        box.buffer, dropped = unexpired(box.buffer, time.time() * 1000)
        if dropped:
            self._on_expired(dropped)
        self._settle(box)

    def clear(self) -> None:
        """Forget entries popped but not yet received (``flush()``)."""
        for box in list(self._mailboxes.values()):
            box.buffer.clear()
            self._settle(box)
        self._returns = []

    def buffered_keys(self) -> set[str]:
        return {box.key for box in self._mailboxes.values() if box.buffer}

    def queued(self) -> int:
        return sum(len(box.buffer) for box in self._mailboxes.values())

    def leftovers(self) -> list[tuple[str, list[bytes]]]:
        """Take every entry popped here that no receive has taken, as list entries again, to go
        back to the front of their lists: the loop is closing (``close_pools()``, or a loop of
        ``async_to_sync`` gone), and the receive they wait for may come in another loop."""
        out, self._returns = self._returns, []
        out += [(box.key, self._entries(box)) for box in self._mailboxes.values() if box.buffer]
        return out

    def adopt(self, returns: list[tuple[str, list[bytes]]]) -> None:
        """Push ``returns`` (the leftovers of a closed loop's receiver) back, from this loop."""
        if returns:
            self._returns += returns
            self._wanted(None)

    def _entries(self, box: Mailbox) -> list[bytes]:
        """Empty ``box`` into list entries (an inbox's with their local part)."""
        local = box.channel.partition("!")[2].encode() if box.inbox else b""
        seal = self._seal
        entries = [
            make_entry(expires, payload if isinstance(payload, bytes) else seal(payload), local)
            for payload, expires in box.buffer
        ]
        box.buffer.clear()
        return entries

    async def close(self) -> None:
        """Stop the loop; every entry popped but not received goes back to its list."""
        self._closed = True
        if self._task is not None:
            self._task.cancel()
        pushes = [
            self.pipe.call("LPUSH", key, *reversed(entries)) for key, entries in self.leftovers()
        ]
        await asyncio.gather(*pushes, return_exceptions=True)
        await self._conn.close()
