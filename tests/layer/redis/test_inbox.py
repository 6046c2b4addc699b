"""Several threads' event loops receiving at once on one Redis layer (layer/redis/inbox.py):
the process's own channels share one inbox list, so what one loop pops is another's to
receive; shared channels are popped by each loop for itself. Real redis-server, real threads
(threaded WSGI Django: ``async_to_sync`` per request; thread-pool workers; long-lived loops)."""

from __future__ import annotations

import asyncio
import collections
import threading
import time
from collections.abc import Iterator

import pytest
from asgiref.sync import async_to_sync
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from harness.redis_server import RedisServer
from tests.layer.redis_fixtures import owner_and_remote
from tests.layer.threads import KINDS, Reader, received_by_threads


@pytest.fixture(scope="module")
def server() -> Iterator[RedisServer]:
    started = RedisServer().start()
    yield started
    started.stop()


# Without "close" (tested below): see test_many_short_loops_and_one_closing_after_each_receive.
readers = st.lists(
    st.builds(Reader, st.sampled_from([k for k in KINDS if k != "close"]), st.integers(1, 3)),
    min_size=2,
    max_size=8,
)


@pytest.mark.timeout(600)
@settings(
    max_examples=6,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(readers=readers, grouped=st.sampled_from([0, 40]), seed=st.integers(0, 1000))
def test_threads_loops_of_every_kind_get_each_message_once_in_order(
    server: RedisServer, readers: list[Reader], grouped: int, seed: int
) -> None:
    """2-8 threads, each receiving on 1-3 channels in turns, in short loops, batches or one
    long-lived loop, while another process streams to every
    channel (and to a group of all of them): thousands of messages in all, each channel gets
    each message once, in the sender's order, and nothing is left behind."""
    owner, remote = owner_and_remote(server)
    direct = max(60, 2400 // sum(r.channels for r in readers))
    try:
        outcome = received_by_threads(owner, remote, readers, direct, grouped, seed)
    finally:
        async_to_sync(owner.flush)()
        async_to_sync(owner.close)()
    assert outcome.problems() == []


@pytest.mark.timeout(120)
def test_close_from_another_threads_loop_while_others_receive(server: RedisServer) -> None:
    """Threads receive in short and long-lived loops while other threads call close() after
    each receive (close_pools() at the end of a request): close() pushes back only what no
    other loop pops; the rest stays for this process's receives. Once each, in order."""
    owner, remote = owner_and_remote(server)
    plan = [Reader("short", 2), Reader("long", 2), Reader("close", 1), Reader("close", 1)]
    try:
        outcome = received_by_threads(owner, remote, plan, 300, grouped=30)
    finally:
        async_to_sync(owner.close)()
    assert outcome.problems() == []


@pytest.mark.timeout(300)
def test_many_short_loops_and_one_closing_after_each_receive(server: RedisServer) -> None:
    """Seven threads of 3 ms ``async_to_sync`` receives on 12 channels, and one that calls
    close() after each receive, while another process streams (and fans out to all). Each
    loop must connect before it can pop, which on a loaded host outlasts its receive: the
    inbox is popped by whichever loop is connected, for every loop's receives (it stalled
    when a loop held the popper role while connecting and popped only for its own)."""
    owner, remote = owner_and_remote(server)
    plan = [Reader("short", n) for n in (1, 2, 3, 2, 1, 1, 1)] + [Reader("close", 1)]
    try:
        outcome = received_by_threads(owner, remote, plan, 200, grouped=40)
    finally:
        async_to_sync(owner.flush)()
        async_to_sync(owner.close)()
    assert outcome.problems() == []


@pytest.mark.timeout(120)
def test_a_shared_channel_received_in_several_threads_loops(server: RedisServer) -> None:
    """Short loops (a few receives each) in three threads and one long-lived loop take from
    one shared channel
    while another process streams to it; the short ones stop halfway. Each message reaches
    exactly one of them (popped atomically), and what a short loop had popped (ahead) when it ended
    goes back to the list as it ends, for the long-lived loop (not left for a next loop of
    the process that never comes)."""
    owner, remote = owner_and_remote(server)
    total, channel = 1500, "work.shared"
    got: list[list[int]] = [[] for _ in range(4)]
    halfway = threading.Event()

    async def take(wait: float) -> int | None:
        try:
            return int((await asyncio.wait_for(owner.receive(channel), wait))["i"])
        except TimeoutError:
            return None

    async def take_some() -> list[int]:  # it keeps receiving: it takes ahead (prefetch)
        some = []
        while len(some) < 5 and (i := await take(0.01)) is not None:
            some.append(i)
        return some

    def short(k: int) -> None:
        while not halfway.is_set():
            got[k] += async_to_sync(take_some)()

    def long() -> None:
        async def main() -> None:
            quiet = time.monotonic()
            while time.monotonic() - quiet < 5.0 and sum(map(len, got)) < total:
                if (i := await take(0.05)) is not None:
                    got[3].append(i)
                    quiet = time.monotonic()

        asyncio.run(main())

    async def send_all() -> None:
        for i in range(total):
            await remote.send(channel, {"type": "w", "i": i})
            if i == total // 2:
                halfway.set()
            if i % 5 == 0:
                await asyncio.sleep(0.001)

    threads = [threading.Thread(target=short, args=(k,)) for k in range(3)]
    threads.append(threading.Thread(target=long))
    for thread in threads:
        thread.start()
    try:
        async_to_sync(send_all)()
    finally:
        halfway.set()
        for thread in threads:
            thread.join(60)
        async_to_sync(owner.close)()
    every = [i for mine in got for i in mine]
    twice = [i for i, n in collections.Counter(every).items() if n > 1]
    assert twice == []
    assert sorted(every) == list(range(total)), f"{total - len(every)} stranded or lost"
