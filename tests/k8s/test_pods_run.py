"""Every overlay's pods, started as real local processes from the rendered manifests.

Proves what the static checks cannot: the probes' paths and ports are served by the real
``layerkit`` started with the manifest's args and env, the layer config from the ConfigMap is
accepted, and the HTTP Service's target port serves the app on the backend the overlay means.
See :mod:`tests.k8s.podrun` for what stands in for the node.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.k8s.model import Obj, Pod, by_kind, containers, image_repo, pods
from tests.k8s.podrun import serving
from tests.k8s.render import render

ROOT = Path(__file__).resolve().parents[2]
BACKENDS = {
    "inmemory": "layer.inmemory.",
    "ipc": "layer.ipc.",
    "redis-sharded": "layer.redis.",
    "local-redis": "layer.local.",
}


@contextlib.contextmanager
def redis_shards(objects: list[Obj]) -> Iterator[dict[str, str]]:
    """One local redis-server per Redis StatefulSet pod, started as the image starts it (its
    entrypoint, the ACL user, password and key patterns from the container's resolved env):
    ``redis-N.svc:port`` -> local address."""
    from harness.redis_server import RedisServer

    servers, hosts = [], {}
    try:
        for sts in by_kind(objects, "StatefulSet"):
            (container,) = sts["spec"]["template"]["spec"]["containers"]
            if image_repo(container["image"]) != "channel-layer-kit-redis":
                continue
            ((c, problems),) = containers(objects, Pod(sts, sts["spec"]["template"]))
            assert not problems, problems
            port = container["ports"][0]["containerPort"]
            for i in range(sts["spec"]["replicas"]):
                server = RedisServer(
                    user=c.env["REDIS_USERNAME"],
                    password=c.env["REDIS_PASSWORD"],
                    kit_acl=True,
                    key_patterns=c.env["REDIS_KEY_PATTERNS"],
                ).start()
                _readiness_passes(c.spec["readinessProbe"], port, server.port, c.env)
                servers.append(server)
                name = f"{sts['metadata']['name']}-{i}.{sts['spec']['serviceName']}"
                hosts[f"{name}:{port}"] = f"127.0.0.1:{server.port}"
        yield hosts
    finally:
        for server in servers:
            server.stop()


def _readiness_passes(probe: Obj, port: int, local: int, env: dict[str, str]) -> None:
    """The Redis container's readiness command, as declared (the image's redis-ready is
    docker/redis/ready.sh), with the container's env, against the local server: exit 0."""
    command = [str(a) for a in probe["exec"]["command"]]
    assert command[0] == "redis-ready", command
    args = [str(local) if a == str(port) else a for a in command[1:]]
    result = subprocess.run(
        [str(ROOT / "docker/redis/ready.sh"), *args],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=10,
    )
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("name", sorted(BACKENDS))
def test_pods_pass_their_probes_and_serve_through_the_service(name: str) -> None:
    objects = render(ROOT / "k8s" / "overlays" / name)
    kit_pods = [
        p
        for p in pods(objects)
        if any(image_repo(str(c.get("image"))) == "channel-layer-kit" for c in p.spec["containers"])
    ]
    with redis_shards(objects) as hosts, serving(objects, kit_pods, hosts) as (fronts, target):
        for front in fronts:
            status = front.get(target, "/status")
            assert status.status_code == 200, status.text
            assert status.json()["backend"].startswith(BACKENDS[name]), status.json()
