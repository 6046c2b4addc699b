"""The admin port: health, readiness and Prometheus metrics, apart from the app's routes."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator

import httpx
import pytest
import websockets

from harness.redis_server import RedisServer, running
from layer.redis import RedisChannelLayer
from tests.services.conftest import Served
from tests.services.procs import Service, wait_until

pytestmark = pytest.mark.timeout(60)


async def test_admin_endpoints(served: Served) -> None:
    async with httpx.AsyncClient(base_url=served.url, timeout=10) as client:
        assert (await client.get("/json")).status_code == 200
        assert (await client.get("/healthz")).status_code == 404  # the app's namespace, not ours
        async with websockets.connect(f"{served.ws_url}/echo") as ws:
            await ws.send("hi")
            assert await ws.recv() == "hi"
            assert served.front.metric("kit_open_websockets", role="protocol") == 1
            held = [w.metric("kit_open_websockets", role="worker") for w in served.workers]
            assert sum(held) == 1
    for service in {id(s): s for s in (served.front, *served.workers)}.values():
        assert service.admin("/healthz").text == "ok\n"
        ready = service.admin("/readyz")
        assert ready.status_code == 200 and ready.json() == {"ready": True, "failing": []}
        assert service.admin("/nope").status_code == 404
        text = service.admin("/metrics").text
        for name in (
            "kit_requests_total",
            "kit_request_duration_seconds_bucket",
            "kit_inflight_connections",
            "kit_open_websockets",
            'kit_layer{stat="sent"}',
        ):
            assert name in text, name
    assert served.front.metric("kit_requests_total", role="protocol", status="200") >= 1
    assert served.front.metric("kit_request_duration_seconds_count", role="protocol") >= 1


# -- readiness: this process's own storage, never the whole keyspace -------------------------

CHANNEL_LOG = re.compile(r"(?:reply channel|worker channel) ([A-Za-z0-9_.\-!]+)")


def redis_env(*servers: RedisServer) -> dict[str, str]:
    if len(servers) == 1:
        return {"LAYER_CONFIG": "config/redis.yaml", "REDIS_URL": servers[0].url}
    return {
        "LAYER_CONFIG": "config/redis-sharded.yaml",
        **{f"REDIS_SHARD_{i}": server.url for i, server in enumerate(servers)},
    }


def channel_of(service: Service) -> str:
    wait_until(lambda: CHANNEL_LOG.search(service.output()), f"the {service.role}'s channel")
    found = CHANNEL_LOG.search(service.output())
    assert found is not None
    return found.group(1)


@pytest.fixture
def shards() -> Iterator[list[RedisServer]]:
    yield from running(3)


@pytest.fixture
def services() -> Iterator[list[Service]]:
    started: list[Service] = []
    yield started
    for service in started:
        service.discard()


def test_one_shard_of_three_down_leaves_processes_on_live_shards_ready(
    shards: list[RedisServer], services: list[Service]
) -> None:
    """Readiness asks only about the shards this process uses (its own channel, the work
    channel, and for a protocol server the group workers announce themselves on): with one
    shard of three down, a process that uses only the other two stays ready and serves, and
    one whose own channel was on it says so."""
    env = redis_env(*shards)
    ring = RedisChannelLayer(hosts=[server.url for server in shards])
    work = ring.shard_of("work.asgi")
    worker = Service("worker", env).start()
    services.append(worker)
    for _ in range(10):  # a protocol server that leaves some shard unused (each try: >= 7/9)
        proto = Service("protocol", env).start()
        services.append(proto)
        used = {work, ring.shard_of(channel_of(proto)), ring.shard_of_group("kit.protocol")}
        if len(used) < 3:
            break
        proto.discard()
    victim = min({0, 1, 2} - used)
    worker_uses = {work, ring.shard_of(channel_of(worker))}
    shards[victim].kill()
    wait_until(lambda: not worker.ready() if victim in worker_uses else True, "worker not ready")
    for _ in range(10):  # over 3 s: 15 heartbeats, more than the 10 a worker sighting lasts
        ready = proto.admin("/readyz")
        assert ready.status_code == 200, ready.text
        assert httpx.get(f"{proto.url}/json", timeout=10).status_code == 200
        time.sleep(0.3)
    answer = worker.admin("/readyz")
    if victim in worker_uses:
        assert answer.status_code == 503
        assert f"Redis shard {ring.shards[victim].name}" in " ".join(answer.json()["failing"])
    else:
        assert answer.status_code == 200, answer.text


def test_protocol_server_started_before_redis_serves_once_it_starts(
    services: list[Service],
) -> None:
    """It used to exit at once (in Kubernetes: CrashLoopBackOff until the shards' DNS names
    exist). Now it stays up, not ready, retries with backoff (one line each, no traceback),
    and serves once Redis answers."""
    server = RedisServer()  # its port chosen, nothing listening yet
    try:
        env = redis_env(server)
        proto = Service("protocol", env).start(wait=False)
        services.append(proto)
        wait_until(proto.healthy, "the protocol server's admin port")
        wait_until(lambda: proto.output().count("retrying in") >= 3, "three retries")
        ready = proto.admin("/readyz")
        assert ready.status_code == 503
        assert f"Redis shard 127.0.0.1:{server.port}/0 is unavailable" in ready.text
        server.start()
        services.append(Service("worker", env).start())
        wait_until(proto.ready, "the protocol server ready once Redis started")
        assert httpx.get(f"{proto.url}/json", timeout=10).status_code == 200
        assert proto.process is not None and proto.process.poll() is None
        assert "Traceback" not in proto.output()
        retries = [line for line in proto.output().splitlines() if "retrying in" in line]
        delays = [float(line.rsplit("retrying in ", 1)[1].split()[0]) for line in retries]
        assert delays[:3] == [0.5, 1.0, 2.0]  # backoff, one line per attempt
    finally:
        server.stop()


def test_readiness_probe_never_walks_the_keyspace(services: list[Service]) -> None:
    """With a million unrelated keys, stats() (SCAN + LLEN) took 1.5 s, beyond Kubernetes' 1 s
    default probe timeout. A probe is one PING per shard of the process's own channels:
    counted by the server (INFO commandstats), not timed."""
    server = RedisServer().start()
    try:
        client = server.client()
        for start in range(0, 1_000_000, 100_000):
            client.eval(
                "for i = ARGV[1], ARGV[2] do redis.call('SET', 'unrelated:' .. i, 'x') end",
                0, start, start + 99_999,
            )  # fmt: skip
        env = redis_env(server)
        services.append(Service("worker", env).start())
        services.append(Service("protocol", env).start())
        client.config_resetstat()
        probes = 5
        for service in services:
            for _ in range(probes):
                assert service.ready()
        stats = client.info("commandstats")
        assert "cmdstat_scan" not in stats and "cmdstat_llen" not in stats
        assert "cmdstat_keys" not in stats and "cmdstat_dbsize" not in stats
        assert stats["cmdstat_ping"]["calls"] == probes * len(services)  # one shard: one each
        assert client.dbsize() >= 1_000_000
    finally:
        server.stop()
