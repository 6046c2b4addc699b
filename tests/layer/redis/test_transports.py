"""The Redis layer against servers reached the less common ways users configure: TLS
(``rediss://``) and Sentinel. Real redis-server processes (TLS port, sentinel mode), no mocks."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import redis

from harness.ports import free_port
from harness.redis_server import start_process
from layer.redis import RedisChannelLayer
from tests.layer.redis_fixtures import chat_through
from tests.support.certs import self_signed


@pytest.fixture(scope="module")
def tls_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    directory = tmp_path_factory.mktemp("tls")
    cert, key = self_signed(directory)
    port = free_port()
    url = f"rediss://127.0.0.1:{port}/0?ssl_ca_certs={cert}"
    args = ["--port", "0", "--tls-port", str(port), "--bind", "127.0.0.1"]
    args += ["--tls-cert-file", str(cert), "--tls-key-file", str(key)]
    args += ["--tls-ca-cert-file", str(cert), "--tls-auth-clients", "no"]
    args += ["--save", "", "--appendonly", "no", "--dir", str(directory)]
    process = start_process(args, redis.Redis.from_url(url))
    yield url
    process.kill()
    process.wait()


async def _chat(hosts: list[Any]) -> None:
    """Send, receive, group fan-out and flush through ``hosts``."""
    await chat_through(RedisChannelLayer(hosts=hosts, prefix=f"t{uuid.uuid4().hex[:10]}"))


async def test_rediss_url_with_ca(tls_url: str) -> None:
    await _chat([tls_url])


async def test_rediss_rejects_an_untrusted_server(tls_url: str) -> None:
    """Without the CA the handshake fails, as a ConnectionError naming the shard, not a hang."""
    untrusted = tls_url.split("?")[0]
    layer = RedisChannelLayer(hosts=[untrusted], prefix="untrusted", socket_timeout=2)
    try:
        with pytest.raises(ConnectionError, match=r"127\.0\.0\.1"):
            await layer.send("plain", {"type": "m"})
    finally:
        await layer.close()


async def test_sentinel_resolves_the_master(sentinel_hosts: dict[str, Any]) -> None:
    await _chat([sentinel_hosts])


async def test_sentinel_with_an_unknown_master_fails_clearly(
    sentinel_hosts: dict[str, Any],
) -> None:
    hosts = [{**sentinel_hosts, "master_name": "nosuchmaster"}]
    layer = RedisChannelLayer(hosts=hosts, prefix="nomaster", socket_timeout=2)
    try:
        with pytest.raises(ConnectionError, match="nosuchmaster"):
            await layer.send("plain", {"type": "m"})
    finally:
        await layer.close()
