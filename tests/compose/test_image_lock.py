"""docker/requirements.lock (what the images install, offline from the wheelhouse) pins every
runtime dependency pyproject.toml declares, so a dependency added there cannot silently be
missing from the images: `scripts/images.sh lock` regenerates the lock."""

from __future__ import annotations

import tomllib
from importlib.metadata import requires
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[2]
IMAGE_EXTRAS = ("redis", "ipc", "services")


def test_lock_pins_every_runtime_dependency() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = list(project["dependencies"])
    for extra in IMAGE_EXTRAS:
        wanted += project["optional-dependencies"][extra]
    pins = {}
    for line in (ROOT / "docker" / "requirements.lock").read_text().splitlines():
        if line and not line.startswith("#"):
            name, version = line.split("==")
            pins[canonicalize_name(name)] = version
    for text in wanted:
        requirement = Requirement(text)
        name = canonicalize_name(requirement.name)
        assert name in pins, (
            f"{name} is not in docker/requirements.lock: run scripts/images.sh lock"
        )
        assert requirement.specifier.contains(pins[name], prereleases=True), (text, pins[name])
        for extra in requirement.extras:  # e.g. redis[hiredis], uvicorn[standard]
            assert all(
                canonicalize_name(Requirement(dep).name) in pins
                for dep in _extra_requirements(requirement.name, extra)
            ), (text, extra)


def _extra_requirements(distribution: str, extra: str) -> list[str]:
    """Requirements an installed distribution adds for one of its extras (from its metadata)."""
    found = []
    for text in requires(distribution) or []:
        marker = Requirement(text).marker
        if marker and marker.evaluate({"extra": extra}) and not marker.evaluate({"extra": ""}):
            found.append(text)
    return found
