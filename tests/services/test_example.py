"""The example project (examples/django-chat) as a user runs it from its own directory:
`manage.py collectstatic` and `migrate`, then `layerkit` with nothing but the project's settings,
and two real Chromium browsers chatting in two rooms; the admin logs in across workers."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.services.conftest import StackFactory
from tests.services.procs import ROOT, Service, Stack
from tests.support.chat_pages import EXAMPLE, admin_login, chromium, two_browsers_two_rooms

pytestmark = [pytest.mark.browser, pytest.mark.timeout(240)]

APP = {"KIT_APP": "mysite.asgi:application", "DJANGO_SETTINGS_MODULE": "mysite.settings"}


def manage(env: dict[str, str], *args: str) -> str:
    result = subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=EXAMPLE,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def start(stack: Stack, role: str, **env: str) -> Service:
    """A ``layerkit`` process run from the example's directory, as its README says."""
    service = Service(role, stack.env(**env), cwd=EXAMPLE)
    stack.services.append(service)
    return service.start()


@pytest.mark.parametrize("name", ["inmemory", "redis"])
def test_example_chat(stacks: StackFactory, tmp_path: Path, name: str) -> None:
    stack = stacks(name)
    env = {
        **APP,
        "LAYER_CONFIG": str(ROOT / stack.backend.config),  # the settings read it too
        "DJANGO_STATIC_ROOT": str(tmp_path / "static"),
        "CHAT_DATABASE": str(tmp_path / "db.sqlite3"),
        **stack.backend.env,
    }
    manage(env, "collectstatic", "--noinput")
    manage(env, "migrate", "--noinput")
    manage(
        {**env, "DJANGO_SUPERUSER_PASSWORD": "correct horse battery"},
        "createsuperuser", "--noinput", "--username", "admin", "--email", "admin@example.com",
    )  # fmt: skip
    if name == "inmemory":
        front = start(stack, "combined", KIT_CHANNELS="chat-tasks", **env)
    else:  # two workers, each serving the background channel too
        workers = [start(stack, "worker", KIT_CHANNELS="chat-tasks", **env) for _ in range(2)]
        front = start(stack, "protocol", **env)
        for worker in workers:
            assert "serving background channels chat-tasks" in worker.output()
    assert "from settings.CHANNEL_LAYERS (mysite.settings)" in front.output()
    with chromium() as first, chromium() as second:
        two_browsers_two_rooms(first, second, front.url, front.url)
        admin_login(first, front.url, "admin", "correct horse battery")
