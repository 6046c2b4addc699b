"""Entries going back to the front of their lists (layer/redis/returns.py), against a plain
model: per list, whatever leaves (handed on with newer entries, or pushed back) leaves in the
order it was popped, once. Pushed back for real too: LPUSH of the commands, on a real server."""

from __future__ import annotations

import itertools
from collections.abc import Iterator

import pytest
import redis
from hypothesis import given, settings
from hypothesis import strategies as st

from harness.redis_server import RedisServer
from layer.redis.returns import Returns, lpushes

KEYS = ["a", "b", "c"]
# (what, list, entries popped: a batch going back is never empty; a pop handed on may be)
steps = st.lists(
    st.tuples(st.sampled_from(["add", "ahead_of", "take"]), st.sampled_from(KEYS)).flatmap(
        lambda s: st.tuples(st.just(s[0]), st.just(s[1]), st.integers(s[0] != "ahead_of", 3))
    ),
    max_size=60,
)


@pytest.fixture(scope="module")
def server() -> Iterator[RedisServer]:
    started = RedisServer().start()
    yield started
    started.stop()


def _pushed_back(returns: Returns) -> dict[str, list[int]]:
    """What each list's front reads after the LPUSHes of what is due, one after another."""
    fronts: dict[str, list[int]] = {}
    for command in lpushes(returns.take()):
        _, key, *values = command
        for value in values:  # LPUSH puts each value in front of the one before
            fronts.setdefault(key, []).insert(0, int(value))
    return fronts


@settings(max_examples=300, deadline=None)
@given(steps=steps)
def test_each_lists_entries_leave_in_the_order_popped_once(
    steps: list[tuple[str, str, int]],
) -> None:
    returns, popped = Returns(), itertools.count()
    left: dict[str, list[int]] = {key: [] for key in KEYS}  # what left, per list, in order
    pending: dict[str, list[int]] = {key: [] for key in KEYS}  # the model: due, in order
    for op, key, n in steps:
        batch = [next(popped) for _ in range(n)]  # a pop's entries, in list order
        entries = [str(i).encode() for i in batch]
        if op == "take":
            for k, read in _pushed_back(returns).items():
                left[k] += read
            for k in KEYS:
                pending[k] = []
        elif op == "ahead_of":
            got = [int(e) for e in returns.ahead_of(key, entries)]
            assert got == pending[key] + batch
            left[key] += got
            pending[key] = []
        else:
            returns.add([(key, entries)])
            pending[key] += batch
        assert bool(returns) == any(pending.values())
    for k, read in _pushed_back(returns).items():
        left[k] += read
    for key in KEYS:
        assert left[key] == sorted(left[key])  # (numbered in the order popped)
    everything = [i for key in KEYS for i in left[key]]
    assert len(everything) == len(set(everything))


def test_lpushes_put_entries_back_in_front_in_order(server: RedisServer) -> None:
    """Two batches of one list due (the older first), 2,000 entries: the list reads back in
    the order they were popped, ahead of what was still in it."""
    client = redis.Redis.from_url(server.url)
    client.delete("l")
    client.rpush("l", *[f"{i}".encode() for i in range(2000, 2100)])
    returns = Returns()
    returns.add([("l", [f"{i}".encode() for i in range(1000)])])
    returns.add([("l", [f"{i}".encode() for i in range(1000, 2000)])])
    returns.add([("empty", [])])
    pipe = client.pipeline(transaction=False)
    for command in lpushes(returns.take()):
        pipe.execute_command(*command)
    pipe.execute()
    assert [int(e) for e in client.lrange("l", 0, -1)] == list(range(2100))
    assert not client.exists("empty")
