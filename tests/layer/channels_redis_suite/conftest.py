"""channels_redis's own test suite, run against ``layer.redis.RedisChannelLayer``.

``test_core.py`` and ``test_sentinel.py`` are channels_redis 4.3.0's, byte for byte (its
licence in ``LICENSE``; ``test_upstream.py`` checks their SHA-256), so a later version drops in.
This file is the only glue: in each module, ``RedisChannelLayer`` becomes ours, with ``hosts``
defaulting to the session's redis-server (upstream assumes one on localhost:6379), and the
host lists point at that server (ten dbs of it for the "multiple hosts") and at a sentinel that
watches it. What is skipped on purpose, and why, is ``SKIPPED`` (also in docs/redis.md);
upstream's own ``xfail``s run too, and pass with our layer (they report XPASS).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from harness.redis_server import RedisServer
from layer.redis import RedisChannelLayer

UPSTREAM = "channels_redis 4.3.0"
SHA256 = {
    "test_core.py": "4b5e5ee4c29f746298afdbdae4469d57824f53c1325d012e9896ebe810622cac",
    "test_sentinel.py": "cc1363b4626fd53b8baad0f85c1ef6669affe2e4a0212123618b7b7220ade150",
}
PRIVATE = "channels_redis's private internals ({}): this layer's differ (docs/redis.md)"
SKIPPED = {
    "test_default_group_key_format": PRIVATE.format("_group_key(), its groups' key layout"),
    "test_custom_group_key_format": PRIVATE.format("_group_key(), its groups' key layout"),
    "test_receive_buffer_respects_capacity": PRIVATE.format("receive_buffer, a bounded queue"),
    "test_serialize": PRIVATE.format("serialize(), its wire format: a random prefix + msgpack"),
    "test_deserialize": PRIVATE.format("deserialize(), its wire format"),
}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        why = SKIPPED.get(getattr(item, "originalname", item.name))
        if why is not None and item.path.parent.name == "channels_redis_suite":
            item.add_marker(pytest.mark.skip(reason=why))


@pytest.fixture(autouse=True)
async def our_layer(
    request: pytest.FixtureRequest,
    monkeypatch: pytest.MonkeyPatch,
    redis_server: RedisServer,
    sentinel_hosts: dict[str, Any],
) -> AsyncIterator[None]:
    """Point the upstream module at this layer and at the test servers; close the layers in
    the test's event loop afterwards (pytest-asyncio closes it without cancelling the tasks
    left in it, unlike asyncio.run, uvicorn or async_to_sync: a receive loop collected later
    would log "Task was destroyed but it is pending!" during another test)."""
    module = request.module
    if not hasattr(module, "RedisChannelLayer"):  # test_upstream.py
        yield
        return
    url = redis_server.url
    made: list[RedisChannelLayer] = []

    def layer(**options: Any) -> RedisChannelLayer:
        options.setdefault("hosts", [url])
        made.append(RedisChannelLayer(**options))
        return made[-1]

    monkeypatch.setattr(module, "RedisChannelLayer", layer)
    if module.__name__.endswith("test_sentinel"):
        hosts: list[Any] = [{**sentinel_hosts, "db": db} for db in range(10)]
        monkeypatch.setattr(module, "TEST_HOSTS", [sentinel_hosts])
    else:
        hosts = [url.rsplit("/", 1)[0] + f"/{db}" for db in range(10)]
        monkeypatch.setattr(module, "TEST_HOSTS", [url])
    monkeypatch.setattr(module, "MULTIPLE_TEST_HOSTS", hosts)
    yield
    for one in made:
        await one.close()
