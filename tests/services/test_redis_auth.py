"""A Redis server that refuses the kit (a wrong password, none where one is required, a wrong ACL
user): one clear line and exit code 2 from ``check-config`` and at start; a password changed
under running processes costs one line per retry, backing off, and they recover once it is
right again. It used to be a 62-line traceback, and a traceback every 2 s when running.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest

from harness.redis_server import RedisServer
from tests.services.procs import Service, wait_until
from tests.services.test_cli import layerkit

pytestmark = pytest.mark.timeout(120)

PASSWORD = "right-pass"


@pytest.fixture(scope="module")
def guarded() -> Iterator[RedisServer]:
    """A server with ``requirepass``."""
    server = RedisServer(password=PASSWORD).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def acl() -> Iterator[RedisServer]:
    """A server whose default user is off: only the ACL user ``layerkit`` may connect."""
    server = RedisServer(user="layerkit", password=PASSWORD).start()
    yield server
    server.stop()


def urls(guarded: RedisServer, acl: RedisServer) -> dict[str, tuple[str, str]]:
    """Refused URLs, and what the error says."""
    tcp = f"127.0.0.1:{guarded.port}"
    return {
        "wrong password": (f"redis://:wrong@{tcp}/0", "invalid username-password pair"),
        "no password": (f"redis://{tcp}/0", "(user or password)"),
        "wrong ACL user": (
            f"redis://nobody:{PASSWORD}@127.0.0.1:{acl.port}/0",
            "invalid username-password pair",
        ),
    }


CASES = ["wrong password", "no password", "wrong ACL user"]


def one_line_error(stderr: str, expected: str) -> str:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1, stderr
    assert "Traceback" not in stderr
    assert expected in lines[0] and "refused this client" in lines[0], lines[0]
    assert "wrong@" not in lines[0] and PASSWORD not in lines[0]  # never the password
    return lines[0]


@pytest.mark.parametrize("case", CASES)
def test_check_config_exits_2_with_one_line(
    case: str, guarded: RedisServer, acl: RedisServer
) -> None:
    url, expected = urls(guarded, acl)[case]
    result = layerkit("check-config", "--config", "config/redis.yaml", REDIS_URL=url)
    assert result.returncode == 2, result.stdout + result.stderr
    line = one_line_error(result.stderr, expected)
    assert line.startswith("layerkit: error: Redis shard 127.0.0.1:")


def test_check_config_with_the_right_password_reaches_it(acl: RedisServer) -> None:
    result = layerkit("check-config", "--config", "config/redis.yaml", REDIS_URL=acl.url)
    assert result.returncode == 0, result.stderr
    assert "reach:   ok" in result.stdout and PASSWORD not in result.stdout


@pytest.mark.parametrize("role", ["worker", "protocol"])
@pytest.mark.parametrize("case", CASES)
def test_start_exits_2_with_one_line(
    role: str, case: str, guarded: RedisServer, acl: RedisServer
) -> None:
    url, expected = urls(guarded, acl)[case]
    service = Service(role, {"LAYER_CONFIG": "config/redis.yaml", "REDIS_URL": url})
    try:
        service.start(wait=False)
        assert service.wait(30) == 2
        errors = [line for line in service.output().splitlines() if " ERROR " in line]
        one_line_error("\n".join(errors), expected)
        assert "Traceback" not in service.output()
    finally:
        service.discard()


RETRY = re.compile(r"retrying in (\d+\.\d+) s\): Redis shard \S+ refused this client \(user")


def test_password_changed_under_running_processes(guarded: RedisServer) -> None:
    """The server's password changes and every connection is dropped: the worker and the
    protocol server stay up, not ready, log one line per retry with a growing delay and no
    traceback, and are ready again once the password is right again."""
    env = {"LAYER_CONFIG": "config/redis.yaml", "REDIS_URL": guarded.url}
    services = [Service("worker", env).start(), Service("protocol", env).start()]
    admin = guarded.client()
    try:
        admin.config_set("requirepass", "rotated")  # this connection stays authenticated
        admin.execute_command("CLIENT", "KILL", "TYPE", "normal", "SKIPME", "yes")
        for service in services:
            wait_until(lambda s=service: not s.ready(), f"the {service.role} not ready")
            answer = service.admin("/readyz").json()
            assert "refused this client" in " ".join(answer["failing"]), answer
        worker = services[0]
        wait_until(lambda: len(RETRY.findall(worker.output())) >= 5, "five retries")
        delays = [float(d) for d in RETRY.findall(worker.output())]
        assert delays == sorted(delays) and delays[-1] > delays[0]  # backing off
        for service in services:
            assert service.healthy()  # alive: no restart would fix the password
            assert "Traceback" not in service.output()
        admin.config_set("requirepass", PASSWORD)
        for service in services:
            wait_until(service.ready, f"the {service.role} ready again", timeout=60)
    finally:
        admin.config_set("requirepass", PASSWORD)
        for service in services:
            service.discard()
