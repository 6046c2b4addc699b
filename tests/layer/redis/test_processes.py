"""Across OS processes: a shared work channel, and a Django Channels group chat.

Four producer processes x 25,000 messages into one channel that four consumer processes
receive on (our workers share a work channel exactly like this): every message must arrive
exactly once, and each consumer must see each producer's messages in order.
"""

from __future__ import annotations

import asyncio
import multiprocessing as mp
import os
import subprocess
import sys
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from harness.redis_server import RedisServer
from layer.exceptions import ChannelFull
from layer.redis import RedisChannelLayer

PRODUCERS, CONSUMERS, PER_PRODUCER = 4, 4, 25_000
IDLE = 10.0  # a consumer stops after this long without a message (the hang guard)
ROOT = Path(__file__).resolve().parents[3]


def produce(url: str, prefix: str, producer: int) -> None:
    async def main() -> None:
        layer = RedisChannelLayer(hosts=[url], prefix=prefix, capacity=5_000)
        for i in range(PER_PRODUCER):
            while True:
                try:
                    await layer.send("work", {"type": "job", "p": producer, "i": i})
                    break
                except ChannelFull:
                    await asyncio.sleep(0.01)
        await layer.close()

    asyncio.run(main())


def consume(url: str, prefix: str, out: Any) -> None:
    async def main() -> list[tuple[int, int]]:
        layer = RedisChannelLayer(hosts=[url], prefix=prefix, capacity=5_000)
        got: list[tuple[int, int]] = []
        while True:
            try:
                message = await asyncio.wait_for(layer.receive("work"), IDLE)
            except TimeoutError:
                break
            got.append((message["p"], message["i"]))
            if message["p"] < 0:
                break
        await layer.close()
        return got

    out.put(asyncio.run(main()))


@pytest.mark.timeout(600)
def test_shared_channel_delivers_exactly_once_in_order(redis_server: RedisServer) -> None:
    ctx = mp.get_context("spawn")
    prefix = f"mp{uuid.uuid4().hex[:8]}"
    out = ctx.Queue()
    consumers = [
        ctx.Process(target=consume, args=(redis_server.url, prefix, out)) for _ in range(CONSUMERS)
    ]
    producers = [
        ctx.Process(target=produce, args=(redis_server.url, prefix, p)) for p in range(PRODUCERS)
    ]
    for process in consumers + producers:
        process.start()
    for process in producers:
        process.join(500)
        assert process.exitcode == 0
    asyncio.run(_send_stops(redis_server.url, prefix))
    results = [out.get(timeout=120) for _ in consumers]
    for process in consumers:
        process.join(60)
        assert process.exitcode == 0

    delivered = Counter(item for got in results for item in got if item[0] >= 0)
    expected = {(p, i) for p in range(PRODUCERS) for i in range(PER_PRODUCER)}
    assert set(delivered) == expected, f"missing {len(expected - set(delivered))}"
    assert max(delivered.values()) == 1, "a message was delivered twice"
    for got in results:
        for producer in range(PRODUCERS):
            seen = [i for p, i in got if p == producer]
            assert seen == sorted(seen), f"producer {producer}'s messages out of order"
    assert sum(1 for got in results if got) > 1, "the work was shared"


async def _send_stops(url: str, prefix: str) -> None:
    layer = RedisChannelLayer(hosts=[url], prefix=prefix, capacity=5_000)
    for _ in range(CONSUMERS):
        await layer.send("work", {"type": "stop", "p": -1, "i": -1})
    await layer.close()


CHAT_PEER = """
import asyncio, json, sys
import django
from django.conf import settings
settings.configure(SECRET_KEY="t", INSTALLED_APPS=["channels"], CHANNEL_LAYERS=json.loads(sys.argv[1]))
django.setup()
from channels.testing import WebsocketCommunicator
from tests.layer.test_channels_interop import ChatConsumer

async def main():
    bob = WebsocketCommunicator(ChatConsumer.as_asgi(), "/ws/chat/")
    assert (await bob.connect())[0]
    print("joined", flush=True)
    await bob.send_json_to({"text": "hi from bob"})
    assert await bob.receive_json_from(timeout=20) == {"text": "hi from bob"}
    assert await bob.receive_json_from(timeout=20) == {"text": "hello from alice"}
    await bob.disconnect()
    print("done", flush=True)

asyncio.run(main())
"""


async def test_django_group_chat_across_two_processes(redis_server: RedisServer) -> None:
    import json

    from channels.layers import channel_layers
    from channels.testing import WebsocketCommunicator
    from django.test import override_settings

    from tests.layer.test_channels_interop import ChatConsumer

    layers = {
        "default": {
            "BACKEND": "layer.redis.RedisChannelLayer",
            "CONFIG": {"hosts": [redis_server.url], "prefix": f"dj{uuid.uuid4().hex[:8]}"},
        }
    }
    with override_settings(CHANNEL_LAYERS=layers):
        channel_layers.backends.pop("default", None)
        alice = WebsocketCommunicator(ChatConsumer.as_asgi(), "/ws/chat/")
        assert (await alice.connect())[0]
        peer = await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            CHAT_PEER,
            json.dumps(layers),
            cwd=ROOT,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
            stdout=subprocess.PIPE,
        )
        assert peer.stdout is not None
        assert (await asyncio.wait_for(peer.stdout.readline(), 60)).strip() == b"joined"
        assert await alice.receive_json_from(timeout=20) == {"text": "hi from bob"}
        await alice.send_json_to({"text": "hello from alice"})
        assert await alice.receive_json_from(timeout=20) == {"text": "hello from alice"}
        assert (await asyncio.wait_for(peer.stdout.readline(), 60)).strip() == b"done"
        assert await asyncio.wait_for(peer.wait(), 60) == 0
        await alice.disconnect()
        layer = channel_layers.backends.pop("default")
        await layer.flush()
        await layer.close()
