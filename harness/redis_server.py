"""Real ``redis-server`` processes for tests and benchmarks: free ports, no persistence.

Never relies on a server already running: each :class:`RedisServer` owns its process, its
port (or unix socket) and its temporary directory, and can be killed and restarted in place.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import redis

from harness.ports import free_port

ROOT = Path(__file__).resolve().parents[1]
KIT_ENTRYPOINT = ROOT / "docker" / "redis" / "entrypoint.sh"
KIT_ACL_RULES = ROOT / "docker" / "redis" / "layer.acl"
ADMIN_PASSWORD = "admin-of-the-test"


class RedisServer:
    """One redis-server; ``password``/``user`` add auth, ``unix=True`` listens on a socket only.

    ``kit_acl=True`` starts it through the kit image's entrypoint (docker/redis/entrypoint.sh)
    with the shipped ACL rules: ``user`` is the layer's user, limited to ``key_patterns``; an
    ``admin`` user (password :data:`ADMIN_PASSWORD`) lets a test read the ACL log.
    """

    def __init__(
        self,
        *,
        password: str | None = None,
        user: str | None = None,
        unix: bool = False,
        kit_acl: bool = False,
        key_patterns: str = "asgi:*",
    ) -> None:
        if shutil.which("redis-server") is None:
            raise RuntimeError("redis-server is not installed (make system-deps installs it)")
        self.dir = Path(tempfile.mkdtemp(prefix="layerkit-redis-"))
        self.password, self.user, self.unix = password, user, unix
        self.kit_acl, self.key_patterns = kit_acl, key_patterns
        if kit_acl and not (password and user):
            raise ValueError("kit_acl needs the layer user's name and password")
        self.port = 0 if unix else free_port()
        self.socket_path = str(self.dir / "redis.sock") if unix else ""
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        auth = ""
        if self.password:
            auth = f"{self.user or ''}:{self.password}@"
        if self.unix:
            return f"unix://{auth}{self.socket_path}?db=0"
        return f"redis://{auth}127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        args = [
            "redis-server",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(self.dir),
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--loglevel",
            "warning",
        ]
        if self.unix:
            args += ["--unixsocket", self.socket_path, "--unixsocketperm", "700"]
        env = None
        if self.kit_acl:
            args[0] = str(KIT_ENTRYPOINT)
            args += ["--protected-mode", "yes"]
            env = {
                **os.environ,
                "REDIS_USERNAME": str(self.user),
                "REDIS_PASSWORD": str(self.password),
                "REDIS_ADMIN_PASSWORD": ADMIN_PASSWORD,
                "REDIS_KEY_PATTERNS": self.key_patterns,
                "REDIS_ACL_FILE": str(self.dir / "users.acl"),
                "REDIS_ACL_RULES": str(KIT_ACL_RULES),
            }
        elif self.password and self.user:
            args += [
                "--user",
                "default",
                "off",
                "--user",
                self.user,
                "on",
                f">{self.password}",
                "~*",
                "&*",
                "+@all",
            ]
        elif self.password:
            args += ["--requirepass", self.password]
        self.process = subprocess.Popen(args, stdout=subprocess.DEVNULL, env=env)
        self.wait_ready()
        return self

    @staticmethod
    def version() -> str:
        """``redis-server --version``'s version number."""
        out = subprocess.run(["redis-server", "--version"], capture_output=True, text=True).stdout
        return out.split("v=")[1].split()[0] if "v=" in out else out.strip()

    def client(self) -> redis.Redis:
        return redis.Redis.from_url(self.url)

    def admin(self) -> redis.Redis:
        """A client as the ``admin`` user (``kit_acl`` servers only)."""
        assert self.kit_acl, "only kit_acl servers have an admin user"
        return redis.Redis(
            host="127.0.0.1", port=self.port, username="admin", password=ADMIN_PASSWORD
        )

    def wait_ready(self, timeout: float = 10.0) -> None:
        assert self.process is not None
        with self.client() as client:
            self.wait_until(client, self.process, timeout)

    @staticmethod
    def wait_until(
        client: redis.Redis, process: subprocess.Popen[bytes], timeout: float = 10.0
    ) -> None:
        """Until ``client`` gets a PONG from the server ``process`` is starting (or it dies)."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                client.ping()
                return
            except redis.RedisError:
                if time.monotonic() > deadline:
                    raise
                if process.poll() is not None:
                    code = process.returncode
                    raise RuntimeError(f"redis-server exited with {code}") from None
                time.sleep(0.02)

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        self.process = None

    def stop(self) -> None:
        self.kill()
        shutil.rmtree(self.dir, ignore_errors=True)


def start_process(args: list[str], client: redis.Redis) -> subprocess.Popen[bytes]:
    """``redis-server *args`` (a TLS port, sentinel mode...), once ``client`` gets a PONG."""
    process = subprocess.Popen(["redis-server", *args], stdout=subprocess.DEVNULL)
    try:
        RedisServer.wait_until(client, process)
    except BaseException:
        process.kill()
        process.wait()
        raise
    return process


def running(count: int) -> Iterator[list[RedisServer]]:
    """``count`` fresh servers for one test (killed and restarted in place by fault tests)."""
    servers = [RedisServer().start() for _ in range(count)]
    try:
        yield servers
    finally:
        for server in servers:
            server.stop()
