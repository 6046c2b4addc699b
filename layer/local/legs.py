"""The Redis side of receiving a channel of this host: one long-lived receive per channel.

A process-specific channel this host made gets messages over IPC (senders on this host) and over
Redis (senders elsewhere). A receive waits on IPC in its own task, as the IPC layer's receive
does; the Redis side is a *leg*, a task receiving from Redis that outlives the receive which
started it. Most of these channels see little Redis traffic, so a leg usually waits through many
receives: starting and cancelling one per receive cost more than the IPC receive itself
(measured: docs/layer.md, "Local + Redis"). When the leg takes a message, it interrupts the IPC
wait of the receive in progress (cancel-safe: IPC puts back anything it had taken) and that
receive returns the leg's message; with no receive in progress, the message waits in the leg
for the next one, with a fresh expiry, like a message a cancelled receive put back. A leg no
receive has used for ``IDLE`` seconds is cancelled (the Redis layer puts back what it took).
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Callable, Coroutine
from typing import Any

from layer.messages import Message

IDLE = 5.0  # seconds a leg waits without any receive on its channel before it is cancelled

Leg = asyncio.Task[tuple[float, Message]]  # (when it took the message, the message)


class Legs:
    """This instance's legs, per channel (one event loop's: they are its tasks)."""

    def __init__(
        self,
        receive: Callable[[str], Coroutine[Any, Any, Message]],
        expiry: float,
        on_expired: Callable[[], None],
    ) -> None:
        self._receive = receive
        self._expiry = expiry
        self._on_expired = on_expired
        self._legs: dict[str, Leg] = {}
        self._used: dict[str, float] = {}  # channel -> its last receive (monotonic)
        self._sweeping: asyncio.TimerHandle | None = None

    def get(self, channel: str) -> Leg | None:
        """The channel's leg, unless it belongs to another event loop (``async_to_sync`` may
        run each call in a fresh one): then it is forgotten."""
        leg = self._legs.get(channel)
        if leg is not None and leg.get_loop() is not asyncio.get_running_loop():
            del self._legs[channel]
            return None
        return leg

    def start(self, channel: str) -> Leg:
        loop = asyncio.get_running_loop()
        leg = self._legs[channel] = loop.create_task(self._run(channel))
        self._used[channel] = time.monotonic()
        if self._sweeping is None:
            self._sweeping = loop.call_later(IDLE, self._sweep)
        return leg

    async def _run(self, channel: str) -> tuple[float, Message]:
        message = await self._receive(channel)
        return time.monotonic() + self._expiry, message

    def take(self, channel: str, leg: Leg) -> Message | None:
        """The message of ``leg`` (finished), if it is still this channel's and unexpired."""
        if self._legs.get(channel) is not leg:
            return None  # another receive took it
        del self._legs[channel]
        deadline, message = leg.result()  # raises what the leg raised
        if deadline <= time.monotonic():
            self._on_expired()
            return None
        return message

    def used(self, channel: str) -> None:
        self._used[channel] = time.monotonic()

    def _sweep(self) -> None:
        """Cancel legs whose channel nobody received on for IDLE seconds; drop expired
        messages waiting in finished ones."""
        self._sweeping = None
        now = time.monotonic()
        for channel, leg in list(self._legs.items()):
            if now - self._used.get(channel, now) < IDLE:
                continue
            if not leg.done():
                leg.cancel()
                leg.add_done_callback(functools.partial(self._forget, channel))
            elif leg.cancelled() or leg.exception() is not None:
                self._forget(channel, leg)
            elif leg.result()[0] <= now:
                self._forget(channel, leg)
                self._on_expired()
        self._used = {c: t for c, t in self._used.items() if c in self._legs}
        if self._legs:
            self._sweeping = asyncio.get_running_loop().call_later(IDLE, self._sweep)

    def _forget(self, channel: str, leg: Leg | asyncio.Future[Any]) -> None:
        if self._legs.get(channel) is leg:
            del self._legs[channel]

    def held(self) -> int:
        """Messages waiting in finished legs."""
        return sum(leg.done() and not leg.cancelled() for leg in self._legs.values())

    async def stop(self) -> None:
        """Cancel every leg and wait until they have put back what they took (``flush``,
        ``close``)."""
        legs = list(self._legs.values())
        self._legs.clear()
        self._used.clear()
        if self._sweeping is not None:
            self._sweeping.cancel()
            self._sweeping = None
        for leg in legs:
            leg.cancel()
        loop = asyncio.get_running_loop()
        mine = [leg for leg in legs if leg.get_loop() is loop]  # others' loops are gone
        if mine:
            await asyncio.wait(mine)
