"""The kit's Redis as its image starts it (docker/redis/entrypoint.sh, the rules in
docker/redis/layer.acl): what the layer's user is refused, that nobody gets in without a
password, that the password is nowhere to read on the server's side, and that the health check
(docker/redis/ready.sh) says ready only on PONG. The layer's whole conformance suite under this
user is the ``redis_acl`` backend of tests/layer/conformance/.
"""

from __future__ import annotations

import os
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from harness.redis_server import ROOT, RedisServer
from layer.redis import RedisChannelLayer
from tests.layer.redis_fixtures import ACL_PASSWORD, ACL_USER

READY = ROOT / "docker" / "redis" / "ready.sh"


@pytest.fixture(scope="module")
def server() -> Iterator[RedisServer]:
    started = RedisServer(user=ACL_USER, password=ACL_PASSWORD, kit_acl=True).start()
    yield started
    started.stop()


@pytest.fixture
def layer_user(server: RedisServer) -> Iterator[redis.Redis]:
    client = server.client()
    yield client
    client.close()


# Each refused: (command, why it matters). The first word is the ACL log's name for it.
REFUSED = [
    (("FLUSHALL",), "wipes every user's data"),
    (("FLUSHDB",), "wipes the database"),
    (("CONFIG", "GET", "requirepass"), "reads the server's settings"),
    (("CONFIG", "SET", "protected-mode", "no"), "opens the server"),
    (("DEBUG", "SLEEP", "0"), "stalls or crashes the server"),
    (("SHUTDOWN", "NOSAVE"), "stops the server"),
    (("KEYS", "*"), "blocks the server, lists every key"),
    (("ACL", "LIST"), "reads the users"),
    (("ACL", "SETUSER", ACL_USER, "+@all"), "widens its own rights"),
    (("SCRIPT", "FLUSH"), "drops every client's scripts"),
    (("CLIENT", "LIST"), "reads other clients' addresses"),
    (("CLIENT", "KILL", "TYPE", "normal"), "cuts other clients off"),
    (("MONITOR",), "reads every command of every client"),
    (("PUBLISH", "asgi:x", "m"), "Pub/Sub (the layer uses none)"),
    (("SELECT", "1"), "another database"),
    (("SET", "asgi:x", "v"), "a command the layer does not use, even on its keys"),
    (("RPUSH", "other:x", "v"), "the layer's command on keys outside its prefix"),
    (("EVAL", "return redis.call('FLUSHALL')", "0"), "a denied command inside a script"),
    (("EVAL", "return redis.call('RPUSH', ARGV[1], 1)", "0", "other:y"), "a key out of prefix"),
]


@pytest.mark.parametrize("command", [c for c, _ in REFUSED], ids=[w for _, w in REFUSED])
def test_the_layer_user_is_refused(
    command: tuple[str, ...], layer_user: redis.Redis, server: RedisServer
) -> None:
    with pytest.raises(redis.ResponseError, match=r"(?i)no permissions|can't (run|access)|not all"):
        layer_user.execute_command(*command)
    admin = server.admin()
    if command[0] != "EVAL":  # the ACL's own verdict, whatever else also refuses (DEBUG is off)
        verdict = admin.execute_command("ACL", "DRYRUN", ACL_USER, *command)
        assert b"no permissions" in verdict, verdict
    assert admin.exists("other:x", "other:y") == 0
    assert admin.ping()  # still up: DEBUG/SHUTDOWN never ran


def test_the_layers_own_commands_on_its_keys_are_allowed(layer_user: redis.Redis) -> None:
    """The refusals above are the ACL's, not a broken login: the same connection works."""
    key = f"asgi:c:{uuid.uuid4().hex}"
    assert layer_user.rpush(key, b"m") == 1
    assert layer_user.lpop(key) == b"m"


async def test_a_layer_outside_its_key_prefix_fails_clearly(server: RedisServer) -> None:
    """A deployment whose LAYER_PREFIX the ACL does not cover fails at the first send, with
    the server's reason, instead of losing messages."""
    layer = RedisChannelLayer(hosts=[server.url], prefix="elsewhere")
    try:
        with pytest.raises(redis.exceptions.NoPermissionError, match="access one of the keys"):
            await layer.send("work.x", {"type": "m"})
    finally:
        await layer.close()


def test_nobody_gets_in_without_the_password(server: RedisServer) -> None:
    once = Retry(NoBackoff(), 0)  # redis-py retries an AuthenticationError otherwise
    with pytest.raises(redis.AuthenticationError):
        redis.Redis(port=server.port, retry=once).ping()
    for user, password in (("default", ""), (ACL_USER, "wrong"), ("admin", ACL_PASSWORD)):
        with pytest.raises(redis.AuthenticationError):
            redis.Redis(port=server.port, username=user, password=password, retry=once).ping()


def test_protected_mode_is_on(server: RedisServer) -> None:
    assert server.admin().config_get("protected-mode") == {"protected-mode": "yes"}


def _proc(pid: int, name: str) -> bytes:
    return Path(f"/proc/{pid}/{name}").read_bytes()


def test_the_password_is_nowhere_on_the_servers_side(server: RedisServer) -> None:
    """Not in its command line or environment (the entrypoint unsets it before exec), and the
    ACL file, readable by its uid only, holds a SHA-256 of it."""
    assert server.process is not None
    pid = server.process.pid
    assert Path(f"/proc/{pid}/exe").resolve().name.startswith("redis")  # exec'd, no shell left
    for name in ("cmdline", "environ"):
        assert ACL_PASSWORD.encode() not in _proc(pid, name), name
    acl = server.dir / "users.acl"
    assert acl.stat().st_mode & 0o777 == 0o600
    text = acl.read_text()
    assert ACL_PASSWORD not in text and "#" in text
    assert text.splitlines()[0].startswith("user default off")


def _ready(port: int, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("REDIS")}
    return subprocess.run(
        [str(READY), str(port)], env={**clean, **env}, capture_output=True, text=True, timeout=10
    )


def test_ready_only_on_pong(server: RedisServer) -> None:
    """redis-ready: ready with the layer's password; not ready (exit 1, the reason on stderr)
    without it, with a wrong one, or when nothing listens. ``redis-cli ping`` alone exits 0 on
    NOAUTH, which is why the health checks do not use it."""
    assert subprocess.run(["redis-cli", "-p", str(server.port), "ping"]).returncode == 0
    good = {"REDIS_USERNAME": ACL_USER, "REDIS_PASSWORD": ACL_PASSWORD}
    assert _ready(server.port, **good).returncode == 0
    cases = {
        "no password": ({}, "NOAUTH"),
        "wrong password": ({**good, "REDIS_PASSWORD": "wrong"}, "WRONGPASS"),
    }
    for case, (env, reason) in cases.items():
        result = _ready(server.port, **env)
        assert result.returncode == 1, case
        assert reason in result.stderr, (case, result.stderr)
    from harness.ports import free_port

    assert _ready(free_port(), **good).returncode == 1  # nothing listening


def test_the_entrypoint_refuses_to_start_without_a_password(tmp_path: Path) -> None:
    result = subprocess.run(
        [str(ROOT / "docker/redis/entrypoint.sh"), "--port", "0"],
        env={"PATH": os.environ["PATH"], "REDIS_ACL_FILE": str(tmp_path / "users.acl")},
        capture_output=True,
        text=True,
        timeout=10,
    )
    assert result.returncode != 0 and "REDIS_PASSWORD" in result.stderr
    assert not (tmp_path / "users.acl").exists()


@pytest.mark.timeout(120)
def test_short_lived_loops_under_the_acl_lose_nothing(server: RedisServer) -> None:
    """A loop that ends mid-pop wakes it through a one-off connection (its pipe is not
    connected in a receive-only loop): under the kit's ACL too, and without waiting for
    ``socket_timeout`` (5 s) at the end of each call."""
    import time

    from asgiref.sync import async_to_sync

    from tests.layer.receiving import received_by_short_loops

    owner, remote = (RedisChannelLayer(hosts=[server.url], capacity=10_000) for _ in range(2))
    reply = async_to_sync(owner.new_channel)("reply")
    started = time.monotonic()
    try:
        got = received_by_short_loops(owner, remote, reply, 300)
    finally:
        async_to_sync(owner.close)()
    assert got == list(range(300))
    assert time.monotonic() - started < 30  # 300 sends 1-4 ms apart, then 1 s of silence
