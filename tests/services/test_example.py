"""The example project (examples/django-chat) as a user runs it from its own directory:
`manage.py collectstatic` and `migrate`, then `layerkit` with nothing but the project's settings,
and two real Chromium browsers chatting in two rooms; the admin logs in across workers."""

from __future__ import annotations

import os
import re
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


@pytest.mark.parametrize("name", ["inmemory", "ipc"])  # docs/your-app.md, step 3
def test_example_chat(stacks: StackFactory, tmp_path: Path, name: str) -> None:
    stack = stacks(name)
    env = {
        **APP,
        # As docs/your-app.md runs it: no config for combined (the settings' in-memory default),
        # the built-in name for IPC; the settings read it too.
        "LAYER_CONFIG": "" if name == "inmemory" else Path(stack.backend.config).stem,
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
    else:  # two workers, each serving the background channel too, and a protocol server
        workers = [start(stack, "worker", KIT_CHANNELS="chat-tasks", **env) for _ in range(2)]
        front = start(stack, "protocol", **env)
        for worker in workers:
            assert "serving background channels chat-tasks" in worker.output()
    assert "from settings.CHANNEL_LAYERS (mysite.settings)" in front.output()
    with chromium() as first, chromium() as second:
        two_browsers_two_rooms(first, second, front.url, front.url)
        admin_login(first, front.url, "admin", "correct horse battery")


DOC = ROOT / "docs" / "your-app.md"


def test_the_guide_shows_what_the_tests_run() -> None:
    """docs/your-app.md quotes the example's Dockerfile whole, its settings' layer lines, and
    names only files and commands that exist."""
    doc = DOC.read_text()
    assert f"```dockerfile\n{(EXAMPLE / 'Dockerfile').read_text()}```" in doc
    settings = (EXAMPLE / "mysite" / "settings.py").read_text()
    block = doc.split("from layer.config import load\n\n", 1)[1].split("```", 1)[0]
    assert block in settings
    for path in re.findall(r"(?:examples|k8s|docs|scripts|tests)/[\w./-]*\w", doc):
        target = ROOT / path.replace("tests.k8s.validate", "tests/k8s/validate.py")
        assert target.exists(), path
    assert "layerkit combined --app mysite.asgi:application --channels chat-tasks" in doc
    assert "-f docker-compose.yml -f examples/django-chat/compose.yml" in doc
    integration = (ROOT / "scripts" / "integration.sh").read_text()
    assert "--file examples/django-chat/compose.yml" in integration
    assert "kubectl apply -n chat -k examples/django-chat/k8s" in doc


def test_the_readmes_first_screen_starts_a_django_user() -> None:
    """Install, settings, run: in the README's first screen (its first 12 lines); the steps
    themselves run in tests/services/test_install.py."""
    first = "\n".join((ROOT / "README.md").read_text().splitlines()[:12])
    assert "pip install '/path/to/this/checkout[services]'" in first
    assert (
        'CHANNEL_LAYERS = {"default": {"BACKEND": "layer.inmemory.InMemoryChannelLayer"}}' in first
    )
    assert "layerkit combined --app mysite.asgi:application" in first
