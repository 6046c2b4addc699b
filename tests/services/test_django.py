"""A Django Channels chat (consumers + ``get_asgi_application``) runs unmodified in workers, on
the layer its own settings name (settings.CHANNEL_LAYERS: one source of truth)."""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
import websockets

from tests.services.conftest import ALL, StackFactory, serve
from tests.services.procs import ROOT

pytestmark = pytest.mark.timeout(120)

DJANGO_APP = "tests.services.djchat.asgi:application"
SETTINGS = "tests.services.djchat.settings"  # CHANNEL_LAYERS read from $LAYER_CONFIG


@pytest.mark.parametrize("name", ALL)
async def test_django_channels_chat(stacks: StackFactory, events: Path, name: str) -> None:
    served = serve(stacks, name, events, KIT_APP=DJANGO_APP, DJANGO_SETTINGS_MODULE=SETTINGS)
    pids = {worker.pid for worker in served.workers}
    async with httpx.AsyncClient(base_url=served.url, timeout=20) as client:
        hello = await client.get("/hello/")
        assert hello.status_code == 200 and hello.json()["pid"] in pids
        assert (await client.get("/missing/")).status_code == 404
        async with (
            websockets.connect(f"{served.ws_url}/chat/lobby/") as alice,
            websockets.connect(f"{served.ws_url}/chat/lobby/") as bob,
        ):
            for ws in (alice, bob):
                assert json.loads(await ws.recv())["pid"] in pids
            await alice.send(json.dumps({"text": "hello from alice"}))
            for ws in (alice, bob):
                assert json.loads(await ws.recv()) == {"text": "hello from alice"}
            posted = await client.post("/rooms/lobby/", content=json.dumps({"text": "via view"}))
            assert posted.status_code == 202
            for ws in (alice, bob):
                assert json.loads(await ws.recv()) == {"text": "via view"}


async def test_the_settings_alone_name_the_layer(stacks: StackFactory, events: Path) -> None:
    """No $LAYER_CONFIG: protocol server and workers take settings.CHANNEL_LAYERS, so a room whose
    members sit in two different workers is one room."""
    module = "tests.services.djchat.settings_redis"
    env = {"KIT_APP": DJANGO_APP, "LAYER_CONFIG": "", "DJANGO_SETTINGS_MODULE": module}
    served = serve(stacks, "redis", events, **env)
    for service in (served.front, *served.workers):
        assert f"layer 'default' from settings.CHANNEL_LAYERS ({module})" in service.output()
    pids = {worker.pid for worker in served.workers}
    async with contextlib.AsyncExitStack() as opened:
        members: dict[int, websockets.ClientConnection] = {}
        for _ in range(20):
            ws = await opened.enter_async_context(websockets.connect(f"{served.ws_url}/chat/x/"))
            members.setdefault(json.loads(await ws.recv())["pid"], ws)
            if len(members) == len(pids):
                break
        assert set(members) == pids
        first, second = members.values()
        await first.send(json.dumps({"text": "across workers"}))
        for ws in (first, second):
            assert json.loads(await ws.recv()) == {"text": "across workers"}


def layerkit(*args: str, cwd: Path = ROOT, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {
        k: v for k, v in os.environ.items() if k not in ("LAYER_CONFIG", "DJANGO_SETTINGS_MODULE")
    }
    return subprocess.run(
        [sys.executable, "-m", "services", *args],
        cwd=cwd,
        env={**clean, "PYTHONPATH": str(ROOT), **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


REDIS = {"REDIS_URL": "redis://:s3cret@127.0.0.1:1/0"}  # never connected to: only checked


@pytest.mark.parametrize(
    ("args", "env", "expected"),
    [
        (
            ["check-config", "--config", "inmemory"],
            {"DJANGO_SETTINGS_MODULE": "tests.services.djchat.settings_redis", **REDIS},
            "--config/$LAYER_CONFIG (",
        ),
        (
            ["worker", "--app", DJANGO_APP],
            {
                "DJANGO_SETTINGS_MODULE": "tests.services.djchat.settings_redis",
                "LAYER_CONFIG": "redis",
                **REDIS,
            },
            "settings.CHANNEL_LAYERS (tests.services.djchat.settings_redis) disagree on CONFIG.capacity",
        ),
        (
            ["combined", "--app", DJANGO_APP, "--config", "inmemory"],
            {"DJANGO_SETTINGS_MODULE": "tests.services.djchat.settings_inmemory"},
            "disagree on CONFIG.capacity, CONFIG.channel_capacity, CONFIG.expiry, CONFIG.group_expiry of layer 'default'",
        ),
        (
            ["check-config", "--alias", "other"],
            {"DJANGO_SETTINGS_MODULE": "tests.services.djchat.settings_inmemory"},
            "settings.CHANNEL_LAYERS (tests.services.djchat.settings_inmemory): no layer alias 'other'; defined: default",
        ),
        (
            ["check-config"],
            {"DJANGO_SETTINGS_MODULE": "nosuchproject.settings"},
            "DJANGO_SETTINGS_MODULE=nosuchproject.settings: cannot load settings: No module named 'nosuchproject'",
        ),
        (
            ["check-config"],
            {"DJANGO_SETTINGS_MODULE": "theirs"},
            "'channels.layers.InMemoryChannelLayer' is not a channel layer class of this kit; use one of layer.inmemory.InMemoryChannelLayer",
        ),
    ],
)
def test_a_second_differing_layer_is_refused(
    args: list[str], env: dict[str, str], expected: str, tmp_path: Path
) -> None:
    (tmp_path / "theirs.py").write_text(
        "SECRET_KEY = 'x'\n"
        "CHANNEL_LAYERS = {'default': {'BACKEND': 'channels.layers.InMemoryChannelLayer'}}\n"
    )
    result = layerkit(*args, cwd=tmp_path, **env)
    assert result.returncode == 2, result.stderr
    assert expected in result.stderr
    assert "Traceback" not in result.stderr and "s3cret" not in result.stderr
    assert len(result.stderr.strip().splitlines()) <= 3


def test_check_config_shows_the_settings_layer() -> None:
    alone = layerkit(
        "check-config", DJANGO_SETTINGS_MODULE="tests.services.djchat.settings_redis", **REDIS
    )
    assert alone.returncode == 0, alone.stderr
    assert "config:  settings.CHANNEL_LAYERS (tests.services.djchat.settings_redis)" in alone.stdout
    assert "backend: layer.redis.RedisChannelLayer" in alone.stdout
    assert "s3cret" not in alone.stdout
    # The same layer twice (these settings copy $LAYER_CONFIG) is one layer: accepted.
    both = layerkit("check-config", DJANGO_SETTINGS_MODULE=SETTINGS, LAYER_CONFIG="redis", **REDIS)
    assert both.returncode == 0, both.stderr
    assert f"config:  settings.CHANNEL_LAYERS ({SETTINGS})" in both.stdout


async def test_one_process_with_a_root_logging_config(stacks: StackFactory, events: Path) -> None:
    """combined, the in-memory layer named only in settings, and a LOGGING that sends the root
    logger to a NullHandler at ERROR: the kit's lines still come out, and the chat works."""
    module = "tests.services.djchat.settings_inmemory"
    env = {"KIT_APP": DJANGO_APP, "LAYER_CONFIG": "", "DJANGO_SETTINGS_MODULE": module}
    served = serve(stacks, "inmemory", events, **env)
    async with (
        httpx.AsyncClient(base_url=served.url, timeout=20) as client,
        websockets.connect(f"{served.ws_url}/chat/lobby/") as ws,
    ):
        await ws.recv()
        posted = await client.post("/rooms/lobby/", content=json.dumps({"text": "via view"}))
        assert posted.status_code == 202
        assert json.loads(await ws.recv()) == {"text": "via view"}
    served.front.stop()
    output = served.front.output()
    assert f"layer 'default' from settings.CHANNEL_LAYERS ({module})" in output
    assert "concurrency" in output and "shutting down" in output
    # Django set the process's TZ to its TIME_ZONE (America/Chicago): the kit still logs UTC.
    stamps = re.findall(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ) ", output, re.MULTILINE)
    assert stamps, output
    logged = datetime.datetime.strptime(stamps[-1], "%Y-%m-%dT%H:%M:%SZ")
    utc_now = datetime.datetime.now(datetime.UTC).replace(tzinfo=None)
    assert abs((utc_now - logged).total_seconds()) < 300
