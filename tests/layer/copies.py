"""A group send's members in one receiving process, against a plain model: each member gets
every message once, in order, as its own dict (mutating it changes no other member's), and a
message whose values are all immutable is decoded once for all of them (the members' copies
share those values: a shallow copy each, docs/redis.md "How it is fast").

Used for the IPC inbox (tests/layer/ipc/test_inbox.py) and the Local + Redis bridge
(tests/layer/test_local_fan_out.py): ``sender`` group-sends from another instance (another
host's, for the bridge), ``receiver`` owns the members.
"""

from __future__ import annotations

import asyncio
import uuid
from collections import deque
from typing import Any

from hypothesis import strategies as st

from layer.base import BaseChannelLayer
from tests.layer.receiving import receive_soon

MEMBERS = 6
TEXT = "a text long enough that two decodes never share its str object"

# ("group", kind, -) | ("send", kind, member) | ("receive", -, member) | ("wait", -, member)
Step = tuple[str, str, int]
steps = st.lists(
    st.tuples(
        st.sampled_from(["group", "group", "send", "receive", "receive", "wait"]),
        st.sampled_from(["flat", "nested"]),
        st.integers(0, MEMBERS - 1),
    ),
    min_size=1,
    max_size=80,
)


def at_scale(size: int, sends: int) -> list[Step]:
    """A plan for ``size`` members: every other one waiting for the first group send (handed to
    it), then ``sends`` group sends, flat and nested in turn, a direct send to member 0 among
    them, held for receives that come after (each member drained at the end)."""
    plan: list[Step] = [("wait", "flat", k) for k in range(0, size, 2)]
    plan += [("group", "flat" if i % 2 else "nested", 0) for i in range(sends)]
    plan.insert(len(plan) - sends // 2, ("send", "flat", 0))
    return plan


def message(kind: str, i: int) -> dict[str, Any]:
    """A flat message (every value immutable: decoded once and shared) or one with a list
    (each member decodes its own)."""
    if kind == "flat":
        return {"type": "chat", "i": i, "text": TEXT, "blob": b"\x00" * 40, "f": 0.5}
    return {"type": "chat", "i": i, "text": TEXT, "tags": [1, 2, [3]], "meta": {"k": "v"}}


def mutate(got: dict[str, Any], member: int) -> None:
    """What a consumer may do to the message it received: every top-level and nested value."""
    got["type"] = f"mutated.{member}"
    got["by"] = member
    del got["text"]
    if "tags" in got:
        got["tags"].append(member)
        got["tags"][2].append(member)
        got["meta"]["k"] = member


def mutated(want: dict[str, Any], member: int) -> dict[str, Any]:
    """``want`` as :func:`mutate` leaves a member's own copy (built fresh from the model)."""
    kept = message("nested" if "tags" in want else "flat", want["i"])
    mutate(kept, member)
    return kept


async def run_model(
    sender: BaseChannelLayer, receiver: BaseChannelLayer, plan: list[Step], size: int = MEMBERS
) -> None:
    """Run ``plan`` on a group of ``size`` members against the model (see the module
    docstring); every member drained at the end, each message it got checked again for other
    members' mutations."""
    group = f"g{uuid.uuid4().hex[:10]}"
    members = [await receiver.new_channel("m") for _ in range(size)]
    for member in members:
        await receiver.group_add(group, member)
    expected: list[deque[dict[str, Any]]] = [deque() for _ in members]
    waiting: dict[int, asyncio.Future[dict[str, Any]]] = {}
    kept: list[tuple[int, dict[str, Any], dict[str, Any]]] = []  # member, got, as sent
    # A group send's copies received so far (kept: no id is reused), and the first's values.
    by_send: dict[int, tuple[set[int], dict[str, Any]]] = {}

    def check(k: int, got: dict[str, Any]) -> None:
        want = expected[k].popleft()
        assert got == want, "out of order, doubled, or changed by another member"
        if want["i"] in by_send:  # a group send's: each member's own dict
            ids, first = by_send[want["i"]]
            assert id(got) not in ids
            if not first:
                first.update(got)
            elif "tags" in got:  # and its own list (decoded again)
                assert got["tags"] is not first["tags"]
            else:  # decoded once: the members' copies share its (immutable) values
                assert got["text"] is first["text"] and got["blob"] is first["blob"]
            ids.add(id(got))
        mutate(got, k)
        kept.append((k, got, want))

    async def take(k: int) -> None:
        future = waiting.pop(k, None)
        got = await (asyncio.wait_for(future, 10) if future else receive_soon(receiver, members[k]))
        check(k, got)

    for i, (kind, shape, k) in enumerate(plan):
        if kind == "group":
            await sender.group_send(group, message(shape, i))
            by_send[i] = (set(), {})
            for queue in expected:
                queue.append(message(shape, i))
        elif kind == "send":
            await sender.send(members[k], message(shape, i))
            expected[k].append(message(shape, i))
        elif kind == "receive" and expected[k]:
            await take(k)
        elif kind == "wait" and not expected[k] and k not in waiting:  # handed the next one
            waiting[k] = asyncio.ensure_future(receiver.receive(members[k]))
            await asyncio.sleep(0)
    for k, queue in enumerate(expected):
        while queue:
            await take(k)
    for k, future in waiting.items():
        assert not future.done(), f"member {k} got a message never sent to it"
        future.cancel()
    for k, got, want in kept:
        assert got == mutated(want, k), "another member's mutation reached this copy"
