"""Fixtures of the integration suite: the compose stack that scripts/integration.sh started."""

from __future__ import annotations

import os

import pytest

from tests.integration.stack import Stack, docker


@pytest.fixture(scope="session")
def stack() -> Stack:
    project = os.environ.get("KIT_COMPOSE_PROJECT", "kitit")
    if docker("info", check=False).returncode != 0:
        pytest.fail("no Docker daemon answers: run `make integration-test`")
    found = Stack(project)
    if not found.services():
        pytest.fail(f"no compose project {project!r} is running: run `make integration-test`")
    return found
