"""What pyproject.toml allows of a dependency, to check that the installed release is inside
the range an adapter was tested with."""

from __future__ import annotations

import tomllib
from importlib.metadata import version
from pathlib import Path

from packaging.requirements import Requirement

PYPROJECT = Path(__file__).resolve().parents[2] / "pyproject.toml"


def allowed(distribution: str) -> Requirement:
    """The requirement on ``distribution`` in pyproject.toml's optional dependencies."""
    extras = tomllib.loads(PYPROJECT.read_text())["project"]["optional-dependencies"]
    for requirements in extras.values():
        for line in requirements:
            requirement = Requirement(line)
            if requirement.name == distribution:
                return requirement
    raise LookupError(f"pyproject.toml does not require {distribution}")


def installed_within(distribution: str) -> tuple[str, str]:
    """(installed version, allowed specifier); asserts the first is in the second."""
    spec = allowed(distribution).specifier
    installed = version(distribution)
    assert spec.contains(installed), (
        f"{distribution} {installed} is installed, pyproject.toml allows {spec}: test the "
        f"adapter with it, then move the cap (and the adapter's TESTED)"
    )
    return installed, str(spec)
