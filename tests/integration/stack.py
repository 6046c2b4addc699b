"""The running docker-compose stack as the integration tests see it: containers by compose
service name, their published 127.0.0.1 ports, and the docker commands the failure tests use.

The stack is brought up and torn down by scripts/integration.sh (`make integration-test`);
KIT_COMPOSE_PROJECT names it, so these tests also run against a stack started by hand.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from dataclasses import dataclass
from typing import Any

IMAGE = (
    f"{os.environ.get('KIT_APP_IMAGE', 'channel-layer-kit')}:{os.environ.get('KIT_TAG', '0.1.0')}"
)
WAIT = 120.0  # generous bound on waiting for a container to (re)start; never a speed assertion


def docker(
    *args: str, check: bool = True, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    """Run the docker CLI; a failure raises with docker's own message."""
    result = subprocess.run(
        ["docker", *args], capture_output=True, text=True, check=False, timeout=timeout
    )
    if check and result.returncode != 0:
        raise RuntimeError(f"docker {' '.join(args)} failed: {result.stderr.strip()}")
    return result


@dataclass(frozen=True)
class Stack:
    """One compose project's containers, looked up through the labels compose puts on them."""

    project: str

    def container(self, service: str) -> str:
        ids = docker(
            "ps", "-aq",
            "--filter", f"label=com.docker.compose.project={self.project}",
            "--filter", f"label=com.docker.compose.service={service}",
        ).stdout.split()  # fmt: skip
        if len(ids) != 1:
            raise LookupError(f"expected one container for {service!r}, found {ids}")
        return ids[0]

    def services(self) -> list[str]:
        out = docker(
            "ps", "-a",
            "--filter", f"label=com.docker.compose.project={self.project}",
            "--format", '{{.Label "com.docker.compose.service"}}',
        ).stdout  # fmt: skip
        return sorted(set(out.split()))

    def inspect(self, service: str) -> dict[str, Any]:
        data: list[dict[str, Any]] = json.loads(docker("inspect", self.container(service)).stdout)
        return data[0]

    def hostname(self, service: str) -> str:
        return str(self.inspect(service)["Config"]["Hostname"])

    def url(self, service: str, container_port: int = 8000, scheme: str = "http") -> str:
        bindings = self.inspect(service)["NetworkSettings"]["Ports"].get(f"{container_port}/tcp")
        if not bindings:
            raise LookupError(f"{service} publishes no host port for {container_port}")
        return f"{scheme}://{bindings[0]['HostIp']}:{bindings[0]['HostPort']}"

    def exec(self, service: str, *command: str, check: bool = True) -> str:
        return docker("exec", self.container(service), *command, check=check).stdout

    def python(self, service: str, code: str) -> str:
        """Run Python inside a container (the images carry no shell tools beyond coreutils)."""
        return self.exec(service, "python3", "-c", code)

    def logs(self, service: str, tail: int | None = None) -> str:
        """A container's output (stdout and stderr), all of it or its last ``tail`` lines."""
        limit = ["--tail", str(tail)] if tail is not None else []
        result = docker("logs", *limit, self.container(service), check=False)
        return result.stdout + result.stderr

    def admin_get(self, service: str, path: str) -> str:
        """GET a path on a container's own admin port, from inside it (workers publish none)."""
        return self.python(
            service,
            "import urllib.request, sys; sys.stdout.write(urllib.request.urlopen("
            f"'http://127.0.0.1:8081{path}', timeout=5).read().decode())",
        )

    def state(self, service: str) -> dict[str, Any]:
        """Start time, restart count and health: what tells a restart from an uninterrupted run."""
        info = self.inspect(service)
        return {
            "started": info["State"]["StartedAt"],
            "restarts": info["RestartCount"],
            "health": info["State"].get("Health", {}).get("Status"),
            "running": info["State"]["Running"],
        }

    def wait_restarted(self, service: str, restarts: int, timeout: float = WAIT) -> None:
        """Wait until Docker's restart policy has restarted a container `restarts` times."""
        deadline = time.monotonic() + timeout
        while (state := self.state(service))["restarts"] < restarts or not state["running"]:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{service} not restarted by its policy: {state}")
            time.sleep(0.5)

    def wait_healthy(self, service: str, timeout: float = WAIT) -> None:
        deadline = time.monotonic() + timeout
        while (state := self.state(service))["health"] != "healthy":
            if time.monotonic() > deadline:
                raise TimeoutError(f"{service} not healthy ({state}): {self.logs(service, 30)}")
            time.sleep(0.5)


def metric_sum(text: str, name: str) -> float:
    """Sum of every sample of one Prometheus metric, whatever its labels."""
    total = 0.0
    for line in text.splitlines():
        if line.startswith((name + "{", name + " ")):
            total += float(line.rsplit(" ", 1)[1])
    return total
