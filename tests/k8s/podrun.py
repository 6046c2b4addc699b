"""Run a rendered pod's kit containers as local processes, the way the kubelet would start them.

No cluster can run here, but the kit's processes can: each container becomes
``python -m services <args>`` (the image's ENTRYPOINT is ``layerkit``) with the environment the
manifest resolves to, its ConfigMap volumes written to a temporary directory standing in for
the mount, and its probes polled exactly as declared. What a node would provide differently is
substituted, and only that: loopback instead of the pod IP, free ports instead of the pod's own
network namespace, a fresh IPC prefix (and a small segment) instead of the pod's own
``/dev/shm``, local ``redis-server``s for the StatefulSet's pod DNS names.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from harness.ports import free_port
from tests.k8s.model import Container, Obj, Pod, containers, find, selector_matches

ROOT = Path(__file__).resolve().parents[2]
STARTUP_LIMIT = 60.0  # bounds a hung start only; nothing is asserted about speed
# Images built FROM the kit's (model.APP_IMAGES) stand in as their project directory (the
# image's WORKDIR /app) and their Dockerfile's ENV, under the manifest's env as in a container.
APP_PROJECTS = {"django-chat": ROOT / "examples" / "django-chat"}


def image_env(project: Path) -> dict[str, str]:
    """The ``ENV k=v ...`` lines of a project's Dockerfile."""
    env: dict[str, str] = {}
    for line in (project / "Dockerfile").read_text().splitlines():
        if line.startswith("ENV "):
            env.update(pair.split("=", 1) for pair in line[4:].split())
    return env


@dataclass
class Process:
    """One container, started as a local process."""

    container: Container
    ports: dict[int, int]  # containerPort -> local port
    proc: subprocess.Popen[bytes]
    log: Path

    def output(self) -> str:
        return self.log.read_text(errors="replace")[-3000:]

    def url(self, port: object, path: str) -> str:
        number = self.container.port_number(port)
        assert number is not None, f"{self.container.where}: port {port!r} is not declared"
        return f"http://127.0.0.1:{self.ports[number]}{path}"

    def get(self, port: object, path: str) -> httpx.Response:
        return httpx.get(self.url(port, path), timeout=5)

    def wait_probe(self, kind: str) -> httpx.Response:
        """Poll the container's ``kind`` probe (an httpGet) until it answers 200."""
        probe = self.container.spec[kind]["httpGet"]
        deadline = time.monotonic() + STARTUP_LIMIT
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"{self.container.where} exited {self.proc.returncode}:\n{self.output()}"
                )
            with contextlib.suppress(httpx.HTTPError):
                response = self.get(probe["port"], probe["path"])
                if response.status_code == 200:
                    return response
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.container.where}: {kind} never passed\n{self.output()}")
            time.sleep(0.1)


@dataclass
class RunningPod:
    """The processes of one pod, and what they were started with."""

    pod: Pod
    processes: list[Process] = field(default_factory=list)

    def process(self, name: str) -> Process:
        return next(p for p in self.processes if p.container.name == name)


def _materialize_volumes(objects: list[Obj], pod: Pod, root: Path) -> dict[str, Path]:
    """Write each ConfigMap volume's files under ``root``; volume name -> directory."""
    dirs = {}
    for volume in pod.spec.get("volumes") or []:
        source = volume.get("configMap")
        if source is None:
            continue
        cm = next(
            o
            for o in objects
            if o["kind"] == "ConfigMap" and o["metadata"]["name"] == source["name"]
        )
        target = root / volume["name"]
        target.mkdir()
        for key, text in (cm.get("data") or {}).items():
            (target / key).write_text(text)
        dirs[volume["name"]] = target
    return dirs


def _local_env(
    c: Container, mounts: dict[str, Path], ports: dict[int, int], hosts: dict[str, str], ipc: str
) -> dict[str, str]:
    """The container's env with node-provided things swapped for local ones (module doc)."""
    env = dict(c.env)
    for mount in c.spec.get("volumeMounts") or []:
        local = mounts.get(mount["name"])
        path = env.get("LAYER_CONFIG", "")
        if local is not None and path.startswith(mount["mountPath"].rstrip("/") + "/"):
            env["LAYER_CONFIG"] = str(local / path[len(mount["mountPath"].rstrip("/")) + 1 :])
    for var in ("KIT_PORT", "KIT_ADMIN_PORT"):
        declared = c.port_setting(var)
        if declared in ports:
            env[var] = str(ports[declared])
    env["KIT_HOST"] = env["KIT_ADMIN_HOST"] = "127.0.0.1"
    if "IPC_PREFIX" in env:
        env["IPC_PREFIX"], env["IPC_SIZE"] = ipc, "16MB"
    for name, value in list(env.items()):
        for dns, local_addr in hosts.items():
            value = value.replace(dns, local_addr)
        env[name] = value
    return env


@contextlib.contextmanager
def run_pod(objects: list[Obj], pod: Pod, hosts: dict[str, str]) -> Iterator[RunningPod]:
    """Start ``pod``'s kit containers together; stop them (SIGTERM) and clean up afterwards.

    ``hosts`` maps DNS ``name:port`` the manifests use to a local ``127.0.0.1:port``.
    """
    workdir = Path(tempfile.mkdtemp(prefix="k8s-pod-"))
    ipc = f"k8s{uuid.uuid4().hex[:8]}"
    running = RunningPod(pod)
    try:
        mounts = _materialize_volumes(objects, pod, workdir)
        for c, problems in containers(objects, pod):
            assert not problems, problems
            if not c.is_kit or c.init:
                continue
            ports = {int(p["containerPort"]): free_port() for p in c.spec.get("ports") or []}
            project = APP_PROJECTS.get(c.repo)
            env = {
                **os.environ,
                **(image_env(project) if project is not None else {}),
                **_local_env(c, mounts, ports, hosts, ipc),
                "PYTHONPATH": str(ROOT),
            }
            log = workdir / f"{c.name}.log"
            with log.open("wb") as out:
                proc = subprocess.Popen(
                    [sys.executable, "-m", "services", *(c.spec.get("args") or [])],
                    cwd=project or ROOT,
                    env=env,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                )
            running.processes.append(Process(c, ports, proc, log))
        yield running
    finally:
        for p in running.processes:
            if p.proc.poll() is None:
                p.proc.send_signal(signal.SIGTERM)
        for p in running.processes:
            try:
                p.proc.wait(40)
            except subprocess.TimeoutExpired:
                p.proc.kill()
                p.proc.wait()
        for path in Path("/dev/shm").glob(f"*{ipc}*"):
            with contextlib.suppress(OSError):
                path.unlink()
        shutil.rmtree(workdir, ignore_errors=True)


@contextlib.contextmanager
def serving(
    objects: list[Obj], app_pods: list[Pod], hosts: dict[str, str]
) -> Iterator[tuple[list[Process], int | str]]:
    """Run ``app_pods`` until every container's liveness and readiness probes pass; yield the
    processes the Service ``channel-layer-kit`` sends its first port to, and that port."""
    with contextlib.ExitStack() as stack:
        running = [stack.enter_context(run_pod(objects, pod, hosts)) for pod in app_pods]
        for pod in running:
            for process in pod.processes:
                process.wait_probe("livenessProbe")
                process.wait_probe("readinessProbe")
        service = find(objects, "Service", "channel-layer-kit")
        assert service is not None
        target = service["spec"]["ports"][0]["targetPort"]
        fronts = [
            p
            for pod in running
            if selector_matches({"matchLabels": service["spec"]["selector"]}, pod.pod.labels)
            for p in pod.processes
            if p.container.declares(target)
        ]
        assert fronts, "the Service selects no running container"
        yield fronts, target
