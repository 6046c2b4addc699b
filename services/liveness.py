"""Which peers are alive: a last-seen table, judged on this process's own attention.

Protocol servers and workers heart-beat each other (``--heartbeat``); a peer silent for
``dead_after`` seconds is given up, and its connections with it. Silence is counted in the
seconds this process was awake to hear it. When our own loop stood still (CPU starvation, a
burst of thousands of handshakes, a debugger, SIGSTOP), the peer's heartbeats sat unread in our
own inbox: blaming the peer for them would drop every connection it holds the moment we wake.
The periodic check notices such a stall itself: it wakes later than it asked to. Both roles
keep one :class:`Liveness` and call :meth:`Liveness.tick` from their check loop.
"""

from __future__ import annotations

from collections import deque

FORGET_AFTER = 60.0  # seconds: a peer silent this long leaves the table, a stall the record


class Liveness:
    """Last-seen loop times of peers, and the stalls of our own loop."""

    __slots__ = ("_last", "_stalls", "dead_after", "interval", "seen")

    def __init__(self, interval: float, dead_after: float) -> None:
        self.interval = interval  # how often tick() is called
        self.dead_after = dead_after
        self.seen: dict[str, float] = {}  # peer -> loop time we last heard from it
        self._last: float | None = None  # loop time of the last tick
        self._stalls: deque[tuple[float, float]] = deque()  # (loop time it ended, seconds)

    def tick(self, now: float) -> float:
        """Once per check, after sleeping ``interval``: note how late we woke, forget peers
        and stalls older than a minute; returns ``now``."""
        late = 0.0 if self._last is None else now - self._last - self.interval
        if late > self.interval / 2:
            self._stalls.append((now, late))
        while self._stalls and now - self._stalls[0][0] > FORGET_AFTER:
            self._stalls.popleft()
        for peer, last in list(self.seen.items()):
            if now - last > FORGET_AFTER:
                del self.seen[peer]
        self._last = now
        return now

    def awake_since(self, then: float, now: float) -> float:
        """Seconds from loop time ``then`` to ``now`` less the stalls of our loop since then."""
        awake = now - then
        for ended, length in reversed(self._stalls):
            if ended <= then:
                break
            awake -= min(length, ended - then)
        return awake

    def dead(self, peer: str, since: float, now: float) -> bool:
        """``peer``, ours since loop time ``since``, has been silent past ``dead_after`` of our
        attention."""
        return self.awake_since(max(self.seen.get(peer, 0.0), since), now) > self.dead_after
