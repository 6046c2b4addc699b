"""k8s/components/django-chat puts the example chat on each of the four topologies: it renders,
validates strictly and passes the kit's policy like the shipped overlays, and differs from the
topology it is put on only in the image and in the app the app containers run.
examples/django-chat/k8s (what docs/your-app.md applies) is that component on redis-sharded."""

from __future__ import annotations

import asyncio
import copy
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import websockets
import yaml

from tests.k8s.model import Obj, image_repo, pods
from tests.k8s.model import containers as containers_of
from tests.k8s.podrun import APP_PROJECTS, serving
from tests.k8s.render import render
from tests.k8s.test_overlays import COMPONENTS, NAMES, OVERLAYS, ROOT
from tests.k8s.test_pods_run import redis_shards
from tests.k8s.validate import validate

COMPONENT = COMPONENTS / "django-chat"
EXAMPLE_OVERLAY = ROOT / "examples" / "django-chat" / "k8s"
APP_ENV = {"KIT_APP": "mysite.asgi:application", "KIT_CHANNELS": "chat-tasks"}


def overlay(tmp_path: Path, topology: str) -> Path:
    """A user's overlay: a topology, then the component."""
    (tmp_path / "kustomization.yaml").write_text(
        yaml.safe_dump(
            {
                "apiVersion": "kustomize.config.k8s.io/v1beta1",
                "kind": "Kustomization",
                "resources": [os.path.relpath(OVERLAYS / topology, tmp_path)],
                "components": [os.path.relpath(COMPONENT, tmp_path)],
            }
        )
    )
    return tmp_path


def containers(objects: list[Obj]) -> list[Obj]:
    return [
        c
        for o in objects
        if "template" in o.get("spec", {})
        for c in o["spec"]["template"]["spec"]["containers"]
    ]


def as_the_demo(objects: list[Obj]) -> list[Obj]:
    """The objects with the component undone: the kit's image, the demo app, no channels."""
    undone = copy.deepcopy(objects)
    for c in containers(undone):
        if image_repo(c["image"]) == "django-chat":
            c["image"] = c["image"].replace("django-chat", "channel-layer-kit", 1)
        env = c.get("env") or []
        for var in env:
            if var["name"] == "KIT_APP":
                var["value"] = "services.demo.app:application"
        c["env"] = [var for var in env if var["name"] != "KIT_CHANNELS"]
        if not c["env"]:
            del c["env"]
    return normal(undone)


def normal(objects: list[Obj]) -> list[Obj]:
    """Containers and env vars in name order: a strategic-merge patch moves the container it
    patches first and appends the vars it adds (the kubelet starts a pod's containers without
    waiting on each other, and env order means nothing without references between vars)."""
    objects = copy.deepcopy(objects)
    for o in objects:
        if "template" in o.get("spec", {}):
            o["spec"]["template"]["spec"]["containers"].sort(key=lambda c: c["name"])
    for c in containers(objects):
        if "env" in c:
            c["env"].sort(key=lambda var: var["name"])
    return objects


@pytest.mark.parametrize("topology", NAMES)
def test_component_on_each_topology(tmp_path: Path, topology: str) -> None:
    path = overlay(tmp_path, topology)
    assert validate(path) == []
    objects = render(path)
    apps = 0
    for c in containers(objects):
        if image_repo(c["image"]).startswith("channel-layer-kit-redis"):
            continue
        assert c["image"] == "django-chat:0.1.0", c["name"]
        env = {var["name"]: var.get("value") for var in c.get("env") or []}
        role = (c.get("args") or ["combined"])[0]
        if role in ("worker", "combined"):
            apps += 1
            assert {k: env.get(k) for k in APP_ENV} == APP_ENV, c["name"]
        else:  # protocol servers: the image's DJANGO_SETTINGS_MODULE names their layer
            assert "KIT_APP" not in env and "KIT_CHANNELS" not in env, c["name"]
    assert apps >= 1
    assert as_the_demo(objects) == normal(render(OVERLAYS / topology))


def test_the_examples_overlay_is_the_component_on_redis_sharded(tmp_path: Path) -> None:
    assert validate(EXAMPLE_OVERLAY) == []
    assert render(EXAMPLE_OVERLAY) == render(overlay(tmp_path, "redis-sharded"))


@pytest.fixture(scope="module")
def collected(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The chat's static files, collected as the image's build collects them."""
    static = tmp_path_factory.mktemp("static")
    subprocess.run(
        [sys.executable, "manage.py", "collectstatic", "--noinput"],
        cwd=APP_PROJECTS["django-chat"],
        env={**os.environ, "DJANGO_STATIC_ROOT": str(static), "LAYER_CONFIG": "inmemory"},
        check=True,
        capture_output=True,
    )
    yield static


@pytest.mark.parametrize("topology", NAMES)
def test_component_pods_run_the_chat(
    tmp_path: Path, topology: str, collected: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The component's pods, started from the rendered manifests (tests/k8s/podrun.py, as the
    shipped overlays' in test_pods_run.py): probes pass, and through the Service the chat's page
    is served and a room's "/shout" comes back from the background task in the app's worker."""
    monkeypatch.setenv("DJANGO_STATIC_ROOT", str(collected))
    objects = render(overlay(tmp_path, topology))
    app_pods = [p for p in pods(objects) if any(c.is_kit for c, _ in containers_of(objects, p))]
    with redis_shards(objects) as hosts, serving(objects, app_pods, hosts) as (fronts, target):
        for front in fronts:
            page = front.get(target, "/chat/lobby/")
            assert page.status_code == 200 and "/static/chat/room." in page.text, page.text
            assert asyncio.run(shout(front.url(target, ""))) == "bot: HI!"


async def shout(url: str) -> str:
    ws_url = url.replace("http://", "ws://", 1) + "/ws/chat/lobby/"
    async with websockets.connect(ws_url, origin=url) as ws:  # type: ignore[arg-type]
        await ws.send(json.dumps({"message": "/shout hi"}))
        message: str = json.loads(await asyncio.wait_for(ws.recv(), 20))["message"]
        return message
