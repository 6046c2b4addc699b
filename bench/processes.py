"""Child processes of a benchmark subject, and the CPU time each of them uses."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from harness.ports import free_port

ROOT = Path(__file__).resolve().parents[1]


class Processes:
    """Child processes of one subject, all stopped (SIGTERM, then SIGKILL) on exit."""

    def __init__(self) -> None:
        self.children: list[subprocess.Popen[bytes]] = []
        self.labels: list[str] = []  # what each child is, for the CPU split
        self.logs: list[Path] = []  # each child's stderr, shown when a subject fails to start

    def spawn(self, args: list[str], label: str, **env: str) -> subprocess.Popen[bytes]:
        with tempfile.NamedTemporaryFile(
            prefix=f"bench-{label}-", suffix=".log", delete=False
        ) as log:
            child = subprocess.Popen(
                args,
                cwd=ROOT,
                env={**os.environ, "PYTHONPATH": str(ROOT), "KIT_LOG_LEVEL": "warning", **env},
                stdout=subprocess.DEVNULL,
                stderr=log,
            )
        self.logs.append(Path(log.name))
        self.children.append(child)
        self.labels.append(label)
        return child

    def layerkit(self, role: str, **env: str) -> None:
        self.spawn(
            [sys.executable, "-m", "services", role], role, KIT_ADMIN_PORT=str(free_port()), **env
        )

    def pids(self) -> list[tuple[str, int]]:
        return [(label, child.pid) for label, child in zip(self.labels, self.children, strict=True)]

    def errors(self, lines: int = 20) -> str:
        """The last ``lines`` of each child's stderr, labelled, with how it ended if it did."""
        parts = []
        for label, child, log in zip(self.labels, self.children, self.logs, strict=True):
            tail = log.read_text(errors="replace").splitlines()[-lines:]
            state = "running" if child.poll() is None else f"exited {child.returncode}"
            parts.append(f"--- {label} ({state})\n" + "\n".join(tail))
        return "\n".join(parts)

    def wait_ready(self, port: int, path: str, seconds: float = 60) -> None:
        """Until ``GET path`` answers 200; else an error with what the children printed."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"http://127.0.0.1:{port}{path}", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"nothing answered on port {port}:\n{self.errors()}")

    def stop(self) -> None:
        for child in reversed(self.children):
            child.send_signal(signal.SIGTERM)
        for child in reversed(self.children):
            try:
                child.wait(15)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()
        for log in self.logs:
            log.unlink(missing_ok=True)


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds ``pid`` has used so far (Linux ``/proc``)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def reaped_cpu() -> float:
    """CPU seconds of this process's finished children (wrk, once ``subprocess.run`` returns)."""
    times = os.times()
    return times.children_user + times.children_system


def cpu_split(before: dict[str, float], after: dict[str, float], requests: float) -> str:
    """CPU µs per request of each process, e.g. ``protocol 70 + worker 41 + wrk 17``."""
    parts = [f"{label} {(after[label] - before[label]) / requests * 1e6:.0f}" for label in after]
    return " + ".join(parts)
