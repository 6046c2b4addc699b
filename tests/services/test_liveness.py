"""services/liveness.py in one real event loop: a loop that stood still (blocked by
``time.sleep``, as a burst of handshakes or CPU starvation blocks it) does not blame its peers for
the silence, and a peer that really is silent is still found dead in time."""

from __future__ import annotations

import asyncio
import time

from services.liveness import FORGET_AFTER, Liveness

INTERVAL = 0.05
DEAD_AFTER = 0.3


async def checking(liveness: Liveness, seconds: float) -> None:
    """The check loop of a role: tick every INTERVAL for ``seconds``."""
    loop = asyncio.get_running_loop()
    end = loop.time() + seconds
    while loop.time() < end:
        liveness.tick(loop.time())
        await asyncio.sleep(INTERVAL)


async def test_our_own_stall_is_not_the_peers_silence() -> None:
    loop = asyncio.get_running_loop()
    liveness = Liveness(INTERVAL, DEAD_AFTER)
    checker = asyncio.ensure_future(checking(liveness, 2.0))
    await asyncio.sleep(0.2)
    liveness.seen["peer"] = heard = loop.time()
    time.sleep(1.0)  # noqa: ASYNC251  (on purpose: the whole loop stands still, beats unread)
    await asyncio.sleep(INTERVAL * 2)  # the check wakes, late, and notes the stall
    now = liveness.tick(loop.time())
    assert now - heard > 1.0
    assert liveness.awake_since(heard, now) < DEAD_AFTER
    assert not liveness.dead("peer", heard, now)
    await asyncio.sleep(DEAD_AFTER + 0.2)  # awake now, and the peer stays silent: dead
    assert liveness.dead("peer", heard, liveness.tick(loop.time()))
    checker.cancel()


async def test_a_silent_peer_is_dead_after_dead_after() -> None:
    loop = asyncio.get_running_loop()
    liveness = Liveness(INTERVAL, DEAD_AFTER)
    checker = asyncio.ensure_future(checking(liveness, 2.0))
    since = loop.time()
    liveness.seen["alive"] = since
    while loop.time() - since < DEAD_AFTER + 0.2:
        liveness.seen["alive"] = loop.time()  # it keeps speaking
        await asyncio.sleep(INTERVAL)
    now = liveness.tick(loop.time())
    assert liveness.dead("never-spoke", since, now)
    assert not liveness.dead("alive", since, now)
    checker.cancel()


def test_a_stall_before_the_peer_spoke_does_not_count() -> None:
    liveness = Liveness(1.0, 3.0)
    liveness.tick(100.0)
    liveness.tick(111.0)  # woke 10 s late: a stall from 101 to 111
    assert liveness.awake_since(100.0, 115.0) == 5.0  # 15 s, 10 of them stalled
    assert liveness.awake_since(105.0, 115.0) == 4.0  # only the 6 s of it after 105
    assert liveness.awake_since(112.0, 115.0) == 3.0  # none of it


def test_old_peers_and_stalls_are_forgotten() -> None:
    liveness = Liveness(1.0, 3.0)
    liveness.tick(0.0)
    liveness.seen["gone"] = 1.0
    liveness.tick(10.0)  # a 9 s stall
    later = 10.0 + FORGET_AFTER + 1
    for second in range(11, int(later) + 1):  # on time from then on
        liveness.tick(float(second))
    assert "gone" not in liveness.seen
    assert liveness.awake_since(9.0, later) == later - 9.0  # the old stall no longer counts
