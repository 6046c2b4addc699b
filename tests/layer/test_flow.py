"""layer/flow.py: each rule against a plain reference, in process (no backend, no I/O)."""

from __future__ import annotations

import asyncio
from collections import deque

from hypothesis import given
from hypothesis import strategies as st

from layer.flow import (
    PRUNE_EVERY,
    RETURN_DELAY,
    STREAMING,
    Credit,
    Every,
    Streaming,
    hand,
    handed,
    remember,
    remember_name,
    unexpired,
)

names = st.sampled_from("abcdefgh")
steps = st.floats(min_value=0.0, max_value=3.0, allow_nan=False)  # seconds between two events


@given(st.integers(1, 6), st.lists(st.tuples(names, st.integers()), max_size=60))
def test_remember_keeps_at_most_most_and_never_a_stale_value(most: int, puts: list) -> None:
    table: dict[str, int] = {}
    last: dict[str, int] = {}  # reference: every key's last value, never forgotten
    for key, value in puts:
        remember(table, key, value, most)
        last[key] = value
        assert len(table) <= most
        assert table[key] == value
        assert all(last[k] == v for k, v in table.items())
    if len(last) <= most:  # never full: nothing forgotten
        assert table == last


@given(st.integers(1, 6), st.lists(names, max_size=60))
def test_remember_name_keeps_at_most_most(most: int, added: list[str]) -> None:
    seen: set[str] = set()
    for name in added:
        remember_name(seen, name, most)
        assert name in seen
        assert len(seen) <= most
    if len(set(added)) < most:
        assert seen == set(added)


# (what, channel, seconds since the previous event): "received" goes to storage, "touch" is
# served from what was taken ahead.
events = st.lists(st.tuples(st.sampled_from(["received", "touch"]), names, steps), max_size=50)


@given(events)
def test_streaming_follows_the_previous_receive_on_each_name(script: list) -> None:
    table = Streaming()
    last: dict[str, float] = {}  # reference: the last receive (of either kind) per name
    on: set[str] = set()
    now = 100.0
    for what, name, step in script:
        now += step
        previous = last.get(name)
        if what == "received":
            keeps = previous is not None and now - previous < STREAMING
            assert table.received(name, now) is keeps
            (on.add if keeps else on.discard)(name)
        else:
            table.touch(name, now)
        last[name] = now
        for other in "abcdefgh":
            assert table.streaming(other) is (other in on)
            idle = now - last[other] if other in last else float("inf")
            assert table.due(other, now) == max(0.0, RETURN_DELAY - idle)


def test_streaming_forgets_everything_when_full() -> None:
    table = Streaming(most=2)
    table.received("a", 0.0)
    assert table.received("a", 0.5)  # keeps receiving
    table.received("b", 0.6)
    assert not table.received("c", 0.7)  # a third name: the table starts afresh
    assert not table.streaming("a")
    assert table.due("a", 0.7) == 0.0  # forgotten: as if never received (goes back at once)
    assert table.received("c", 0.8)  # the new one is remembered


@given(st.lists(steps, max_size=40))
def test_every_is_due_only_after_its_period(gaps: list[float]) -> None:
    now = 50.0
    every = Every(now)
    swept = now  # reference: when the last sweep ran
    for gap in gaps:
        now += gap * 3
        due = now - swept > PRUNE_EVERY
        assert every.due(now) is due
        if due:
            swept = now


@given(st.lists(st.tuples(st.integers(), st.floats(0, 10, allow_nan=False)), max_size=30))
def test_unexpired_matches_a_filter(items: list[tuple[int, float]]) -> None:
    held = deque(items)
    kept, dropped = unexpired(held, 5.0)
    assert list(kept) == [item for item in items if item[1] > 5.0]
    assert dropped == len(items) - len(kept)
    if not dropped:
        assert kept is held  # nothing to copy


credit_ops = st.lists(
    st.one_of(
        st.tuples(st.just("take"), names),
        st.tuples(st.just("grant"), names, st.integers(-5, 400)),
        st.tuples(st.just("revoke"), names),
    ),
    max_size=80,
)


@given(st.integers(1, 100), credit_ops)
def test_credit_counts_down_from_the_room_granted(window: int, ops: list) -> None:
    credit = Credit(window)
    left: dict[str, int] = {}  # reference: sends each channel may still make
    for op in ops:
        channel = op[1]
        if op[0] == "take":
            ok = left.get(channel, 0) > 0
            assert credit.take(channel) is ok
            if ok:
                left[channel] -= 1
        elif op[0] == "grant":
            left[channel] = max(0, min(op[2], window))
            credit.grant(channel, op[2])
        else:
            left[channel] = 0
            credit.revoke(channel)
        assert credit.get(channel) == left.get(channel, 0)
        assert 0 <= credit.get(channel) <= window


def test_credit_starts_afresh_when_full() -> None:
    credit = Credit(10, most=2)
    credit.grant("a", 5)
    credit.grant("b", 5)
    credit.grant("b", 3)  # known: no clearing
    assert (credit.get("a"), credit.get("b")) == (5, 3)
    credit.grant("c", 5)  # a third: the others are forgotten (their sends go checked)
    assert (credit.get("a"), credit.get("b"), credit.get("c")) == (0, 0, 5)
    assert len(credit) == 1


@given(st.lists(st.booleans(), max_size=8))
def test_hand_gives_to_the_first_receive_still_waiting(cancelled: list[bool]) -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        line: deque[asyncio.Future[str]] = deque(loop.create_future() for _ in cancelled)
        futures = list(line)
        for future, gone in zip(futures, cancelled, strict=True):
            if gone:
                future.cancel()
        first = next((i for i, gone in enumerate(cancelled) if not gone), None)
        assert hand(line, "m") is (first is not None)
        if first is None:
            assert not line
        else:
            assert futures[first].result() == "m"
            assert list(line) == futures[first + 1 :]  # the cancelled before it left the line

    asyncio.run(main())


def test_handed_returns_a_cancelled_receives_message_or_leaves_the_line() -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        line: deque[asyncio.Future[str]] = deque(loop.create_future() for _ in range(3))
        got, waiting, other = line
        assert hand(line, "m")  # the first was handed "m", then its receive is cancelled
        assert handed(got, line) == "m"  # the caller gives it back
        waiting.cancel()  # cancelled while waiting: out of the line, nothing to give back
        assert handed(waiting, line) is None
        assert list(line) == [other]
        assert handed(waiting, None) is None  # its line is gone already

    asyncio.run(main())


async def _receive_cancelled_after_it_was_handed(layer_name: str) -> None:
    """Every backend's rule end to end: a receive cancelled after it was handed a message
    puts it back for the next receive, in order (see tests/layer/conformance/ for all backends)."""
    from layer.inmemory import InMemoryChannelLayer

    layer = InMemoryChannelLayer()
    first = asyncio.ensure_future(layer.receive(layer_name))
    await asyncio.sleep(0)
    await layer.send(layer_name, {"type": "a"})
    await layer.send(layer_name, {"type": "b"})
    first.cancel()  # handed "a" already, cancelled before it ran
    await asyncio.gather(first, return_exceptions=True)
    assert [(await layer.receive(layer_name))["type"] for _ in range(2)] == ["a", "b"]


def test_in_memory_receive_cancelled_after_it_was_handed_gives_back() -> None:
    asyncio.run(_receive_cancelled_after_it_was_handed("c"))
