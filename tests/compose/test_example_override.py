"""examples/django-chat/compose.yml swaps the demo for the example chat in every topology of
docker-compose.yml, and changes nothing else: same ports, layers, limits and lockdown."""

from __future__ import annotations

import copy
import json
import subprocess
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from tests.compose.test_compose_file import APP_SERVICES, COMPOSE, ROOT, SCHEMA

OVERRIDE = ROOT / "examples" / "django-chat" / "compose.yml"
WORKERS = {name for name in APP_SERVICES if name.endswith("-worker")} | {"combined"}


def config(*files: Path) -> dict[str, Any]:
    """The merged project as docker-compose 1.29 resolves it (defaults for every variable)."""
    flags = [arg for file in files for arg in ("--file", str(file))]
    result = subprocess.run(
        ["docker-compose", *flags, "config"],
        capture_output=True,
        text=True,
        check=False,
        cwd=ROOT,
        env={"PATH": "/usr/local/bin:/usr/bin:/bin"},
    )
    assert result.returncode == 0, result.stderr
    return yaml.safe_load(result.stdout)  # type: ignore[no-any-return]


def normal(service: dict[str, Any]) -> dict[str, Any]:
    """docker-compose 1.29 prints a network without options as ``{}`` or ``null`` by file."""
    networks = service.get("networks")
    if isinstance(networks, dict):
        service = {**service, "networks": {k: v or {} for k, v in networks.items()}}
    return service


@pytest.fixture(scope="module")
def pair() -> tuple[dict[str, Any], dict[str, Any]]:
    return config(COMPOSE), config(COMPOSE, OVERRIDE)


def test_override_matches_compose_spec_schema() -> None:
    schema = json.loads(SCHEMA.read_text())
    errors = [
        f"{'/'.join(map(str, e.absolute_path))}: {e.message}"
        for e in jsonschema.Draft7Validator(schema).iter_errors(
            yaml.safe_load(OVERRIDE.read_text())
        )
    ]
    assert errors == []


def test_every_app_service_runs_the_example(pair: tuple[dict[str, Any], dict[str, Any]]) -> None:
    base, merged = pair
    assert set(merged["services"]) == set(base["services"])
    for name in APP_SERVICES:
        service = merged["services"][name]
        assert service["image"] == "django-chat:0.1.0", name
        assert service["build"]["context"] == str(ROOT / "examples" / "django-chat"), name
        assert service["build"]["args"]["KIT_IMAGE"] == "channel-layer-kit:0.1.0", name
        env = service["environment"]
        if name in WORKERS:
            assert env["KIT_APP"] == "mysite.asgi:application", name
            assert env["KIT_CHANNELS"] == "chat-tasks", name
        else:  # a protocol server: the image's DJANGO_SETTINGS_MODULE names its layer
            assert "KIT_APP" not in env and "KIT_CHANNELS" not in env, name


def test_nothing_else_changes(pair: tuple[dict[str, Any], dict[str, Any]]) -> None:
    base, merged = pair
    for name, service in merged["services"].items():
        expected = copy.deepcopy(base["services"][name])
        if name in APP_SERVICES:
            for key in ("image", "build"):
                expected[key] = service[key]
            if name in WORKERS:
                expected["environment"].update(
                    KIT_APP="mysite.asgi:application", KIT_CHANNELS="chat-tasks"
                )
        assert normal(service) == normal(expected), name
    assert {k: v for k, v in merged.items() if k != "services"} == {
        k: v for k, v in base.items() if k != "services"
    }
