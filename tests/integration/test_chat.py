"""2. Cross-pod chat over WebSockets, and 7. a bounded message load through pods A and B with
zero lost (or duplicated) messages: the Redis pods, and the two IPC pods of the Local + Redis
topology (their groups cross Redis)."""

from __future__ import annotations

import asyncio
import collections

import httpx
import pytest

from tests.integration.chat import hear, hear_text, in_room, join, new_room, say
from tests.integration.stack import Stack

pytestmark = pytest.mark.integration

CLIENTS_PER_POD = 4
MESSAGES_PER_CLIENT = 50
# topology -> the entry services of its pod A and pod B
PAIRS = {
    "redis": ("pod-a-protocol", "pod-b-protocol"),
    "local": ("local-a-protocol", "local-b-protocol"),
}


@pytest.mark.parametrize("pair", sorted(PAIRS))
async def test_chat_crosses_pods(stack: Stack, pair: str) -> None:
    pod_a, pod_b = PAIRS[pair]
    room = new_room("cross")
    a = await join(stack.url(pod_a), room)
    b = await join(stack.url(pod_b), room)
    try:
        await in_room(a, b)
        await say(a, "alice", "hello from pod A")
        assert (await hear_text(b, "hello from pod A"))["user"] == "alice"
        await say(b, "bob", "hello from pod B")
        assert (await hear_text(a, "hello from pod B"))["user"] == "bob"
        # A plain HTTP POST on pod B reaches WebSockets on both pods (group_send from a request).
        async with httpx.AsyncClient(base_url=stack.url(pod_b), timeout=10) as client:
            response = await client.post(
                f"/rooms/{room}/messages", json={"user": "http", "text": "posted on B"}
            )
        assert response.status_code == 202, response.text
        for ws in (a, b):
            assert (await hear_text(ws, "posted on B"))["user"] == "http"
    finally:
        await asyncio.gather(a.close(), b.close())


@pytest.mark.parametrize("pair", sorted(PAIRS))
async def test_load_through_both_pods_loses_nothing(stack: Stack, pair: str) -> None:
    """Every client sends MESSAGES_PER_CLIENT, each after hearing its previous one back (so the
    load stays within the layer's channel capacity: group_send drops on full by design); every
    client hears every message exactly once, each sender's messages in the order sent."""
    room = new_room("load")
    pod_a, pod_b = PAIRS[pair]
    urls = [stack.url(pod_a)] * CLIENTS_PER_POD
    urls += [stack.url(pod_b)] * CLIENTS_PER_POD
    clients = [await join(url, room) for url in urls]
    total = len(clients) * MESSAGES_PER_CLIENT
    try:
        await in_room(*clients)

        async def run(index: int) -> list[str]:
            ws, heard = clients[index], []
            for n in range(MESSAGES_PER_CLIENT):
                await say(ws, f"user{index}", f"{index}:{n}")
                while (text := (await hear(ws))["text"]) != f"{index}:{n}":
                    heard.append(text)
                heard.append(text)
            while len(heard) < total:
                heard.append((await hear(ws))["text"])
            return heard

        heard = await asyncio.gather(*(run(i) for i in range(len(clients))))
    finally:
        await asyncio.gather(*(ws.close() for ws in clients))
    expected = [f"{i}:{n}" for i in range(len(clients)) for n in range(MESSAGES_PER_CLIENT)]
    for texts in heard:
        assert collections.Counter(texts) == collections.Counter(expected)  # none lost, none twice
        for sender in range(len(clients)):
            mine = [int(t.split(":")[1]) for t in texts if t.startswith(f"{sender}:")]
            assert mine == sorted(mine)
    print(
        f"load ({pair}): {len(clients)} clients x {MESSAGES_PER_CLIENT} messages through pods A+B, "
        f"{total * len(clients)} deliveries, 0 lost, 0 duplicated, per-sender order kept"
    )
