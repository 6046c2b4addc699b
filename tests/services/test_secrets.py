"""Secrets stay secret: ``check-config`` masks every one it prints (URL passwords, dict-form
``password``, ``symmetric_encryption_keys``), the admin port's answers and the logs of running
services never contain them, and the admin port binds apart from the app port (``--admin-host``,
loopback unless told otherwise). Real processes against real ACL-guarded redis-servers.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml

from harness.redis_server import RedisServer
from services.redact import MASK, redacted
from tests.services.procs import Service
from tests.services.test_cli import layerkit

pytestmark = pytest.mark.timeout(120)

PASSWORD = "pw-Zq7-never-shown"
KEYS = ["key-one-Xy3-never-shown", "key-two-Vb8-never-shown"]
SECRETS = [PASSWORD, *KEYS]


@pytest.fixture(scope="module")
def servers() -> Iterator[list[RedisServer]]:
    """Three servers as the kit's image runs them (default user off, the layer's ACL user)."""
    started = [RedisServer(user="layer", password=PASSWORD, kit_acl=True).start() for _ in "abc"]
    yield started
    for server in started:
        server.stop()


@pytest.fixture(scope="module")
def config(servers: list[RedisServer], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A Redis layer config with a secret in each shape a config can hold one."""
    a, b, _ = servers
    path = tmp_path_factory.mktemp("secrets") / "layer.yaml"
    hosts = [
        {"address": f"redis://127.0.0.1:{a.port}/0", "username": "layer", "password": PASSWORD},
        f"redis://layer:{PASSWORD}@127.0.0.1:{b.port}/0",
    ]
    spec = {"BACKEND": "layer.redis.RedisChannelLayer", "CONFIG": {"hosts": hosts}}
    spec["CONFIG"]["symmetric_encryption_keys"] = KEYS
    path.write_text(yaml.safe_dump({"default": spec}))
    return path


def assert_no_secret(text: str) -> None:
    for secret in SECRETS:
        assert secret not in text


def test_check_config_masks_every_secret(config: Path) -> None:
    result = layerkit("check-config", "--config", str(config))
    assert result.returncode == 0, result.stderr
    assert "reach:   ok" in result.stdout  # the secrets were used, only not shown
    assert_no_secret(result.stdout + result.stderr)
    (shard,) = [line for line in result.stdout.splitlines() if line.startswith("  [0] ")]
    assert "password: ***" in shard and "username: layer" in shard
    assert f"redis://layer:{MASK}@127.0.0.1:" in result.stdout
    assert f"symmetric_encryption_keys: {MASK} (2 keys)" in result.stdout


def test_check_config_masks_the_shipped_configs_password(servers: list[RedisServer]) -> None:
    """config/redis-sharded.yaml, as compose and k8s run it: the password from the env (db 0:
    the ACL denies SELECT)."""
    shards = {f"REDIS_SHARD_{i}": f"redis://127.0.0.1:{s.port}/0" for i, s in enumerate(servers)}
    result = layerkit(
        "check-config",
        "--config",
        "redis-sharded",
        REDIS_USERNAME="layer",
        REDIS_PASSWORD=PASSWORD,
        **shards,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "reach:   ok" in result.stdout
    assert_no_secret(result.stdout + result.stderr)
    assert result.stdout.count("(username: layer, password: ***)") == 3


def test_redacted_reaches_every_depth() -> None:
    """Sentinel options nest a password in ``sentinel_kwargs``; a composed layer nests hosts."""
    config = {
        "redis": {
            "hosts": [
                {
                    "sentinels": [["127.0.0.1", 26379]],
                    "master_name": "m",
                    "password": PASSWORD,
                    "sentinel_kwargs": {"password": PASSWORD},
                },
                f"rediss://:{PASSWORD}@h:6380/0?ssl_ca_certs=/ca.pem",
            ],
            "symmetric_encryption_keys": KEYS[:1],
        },
        "ssl_password": PASSWORD,
        "capacity": 100,
        "password": "",  # nothing set: shown as nothing
    }
    shown = redacted(config)
    assert_no_secret(repr(shown))
    assert shown["redis"]["hosts"][0]["sentinel_kwargs"] == {"password": MASK}
    assert shown["redis"]["hosts"][1] == f"rediss://:{MASK}@h:6380/0?ssl_ca_certs=/ca.pem"
    assert shown["redis"]["symmetric_encryption_keys"] == f"{MASK} (1 key)"
    assert shown["capacity"] == 100 and shown["password"] == ""


def test_admin_answers_and_logs_never_hold_a_secret(
    config: Path, servers: list[RedisServer]
) -> None:
    """A worker and a protocol server on the secret config serve a request, as the ACL's user
    (the servers' ACL logs stay empty: the services need nothing the rules deny); every admin
    route and every log line of both is then searched for the password and the keys."""
    for server in servers:
        server.admin().acl_log_reset()
    env = {"LAYER_CONFIG": str(config), "KIT_LOG_LEVEL": "debug"}
    services = [Service("worker", env).start(), Service("protocol", env).start()]
    try:
        protocol = services[1]
        assert httpx.get(protocol.url + "/", timeout=10).status_code == 200
        for service in services:
            for path in ("/metrics", "/readyz", "/healthz", "/nowhere"):
                assert_no_secret(service.admin(path).text)
        for service in services:
            service.stop()
            assert_no_secret(service.output())
        assert [server.admin().acl_log() for server in servers] == [[], [], []]
    finally:
        for service in services:
            service.discard()


def _connects(host: str, port: int) -> bool:
    try:
        socket.create_connection((host, port), timeout=2).close()
    except OSError:
        return False
    return True


@pytest.mark.parametrize("admin_host", [None, "0.0.0.0"])
def test_admin_host_binds_apart_from_the_app_port(admin_host: str | None) -> None:
    """``--host 0.0.0.0`` opens the app port to the network; the admin port stays on loopback
    (127.0.0.1, so another local address such as 127.0.0.2 is refused) unless --admin-host
    says otherwise."""
    env = {"LAYER_CONFIG": "inmemory", "KIT_HOST": "0.0.0.0"}
    if admin_host is not None:
        env["KIT_ADMIN_HOST"] = admin_host
    service = Service("combined", env).start()
    try:
        assert _connects("127.0.0.2", service.port)
        assert _connects("127.0.0.1", service.admin_port)
        assert _connects("127.0.0.2", service.admin_port) is (admin_host == "0.0.0.0")
    finally:
        service.discard()


def _has_ipv6() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as sock:
            sock.bind(("::1", 0))
    except OSError:
        return False
    return True


@pytest.mark.skipif(not _has_ipv6(), reason="this host has no IPv6 loopback")
def test_double_colon_binds_ipv6_and_ipv4() -> None:
    """``--host ::`` (what compose uses) is one dual-stack socket: IPv4 clients and the health
    checks' 127.0.0.1 reach it as well as IPv6 ones, whatever net.ipv6.bindv6only says."""
    env = {"LAYER_CONFIG": "inmemory", "KIT_HOST": "::", "KIT_ADMIN_HOST": "::"}
    service = Service("combined", env).start()
    try:
        for port in (service.port, service.admin_port):
            assert _connects("127.0.0.1", port) and _connects("::1", port)
    finally:
        service.discard()
