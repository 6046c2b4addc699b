"""Throttled log lines: what a flood of one problem (malformed input, a peer gone) says.

Used by the layers (entries in Redis that no layer wrote) and by the services (malformed
messages, unreachable peers): anyone who can write to a channel must not be able to fill the
log, one line per message.
"""

from __future__ import annotations

import logging
import math
import time


class Throttled:
    """A log line per key at most every ``every`` seconds: the first at once, later ones say how
    many were held back since (a flood of the same problem costs a line, not a line each)."""

    def __init__(self, log: logging.Logger, every: float = 10.0) -> None:
        self.log = log
        self.every = every
        self._next: dict[str, float] = {}  # key -> monotonic time its next line may go out
        self._held: dict[str, int] = {}

    def __call__(self, key: str, level: int, msg: str, *args: object) -> None:
        now = time.monotonic()
        if now < self._next.get(key, -math.inf):
            self._held[key] = self._held.get(key, 0) + 1
            return
        self._next[key] = now + self.every
        held = self._held.pop(key, 0)
        if held:
            msg += " (and %d more like it since the last such line)"
            args = (*args, held)
        self.log.log(level, msg, *args)
