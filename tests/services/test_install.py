"""The kit as a normal package: ``pip install <checkout>`` into a fresh venv, then used from a
directory of the user's own, far from the checkout's config/.

Offline: the fresh venv has no packages of its own; it borrows this environment's (pip,
setuptools and the kit's dependencies) through a ``.pth`` line appended after its own
site-packages, and builds the wheel without isolation or an index. The kit itself comes only from the wheel: nothing puts the
checkout on the fresh venv's path.
"""

from __future__ import annotations

import os
import shutil
import site
import subprocess
import venv
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from harness.ports import free_port
from tests.services.procs import ROOT, wait_until

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]

SOURCES = ("pyproject.toml", "README.md", "layer", "services", "config")  # as .dockerignore
USER_APP = """
async def application(scope, receive, send):
    assert scope["type"] == "http"
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"hello from my project"})
"""


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh venv with the kit pip-installed (not editable) from a copy of the checkout's
    package sources; its bin/."""
    home = tmp_path_factory.mktemp("install")
    venv.EnvBuilder().create(home / "venv")
    bin_dir = home / "venv" / "bin"
    purelib = subprocess.run(
        [bin_dir / "python", "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
        capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip
    Path(purelib, "borrowed-deps.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    source = home / "src"  # pip builds in the tree: a copy keeps build/ out of the checkout
    source.mkdir()
    for name in SOURCES:
        if (ROOT / name).is_dir():
            ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
            shutil.copytree(ROOT / name, source / name, symlinks=True, ignore=ignore)
        else:
            shutil.copy2(ROOT / name, source / name)
    result = subprocess.run(
        [
            bin_dir / "python",
            "-m",
            "pip",
            "install",
            "-q",
            "--no-index",
            "--no-build-isolation",
            str(source),
        ],
        cwd=home,
        env=_clean_env(),
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return bin_dir


def _clean_env(**extra: str) -> dict[str, str]:
    skip = ("PYTHONPATH", "VIRTUAL_ENV", "LAYER_CONFIG", "DJANGO_SETTINGS_MODULE")
    env = {k: v for k, v in os.environ.items() if k not in skip and not k.startswith("KIT_")}
    return {**env, **extra}


def test_the_kit_comes_from_the_wheel_not_the_checkout(installed: Path, tmp_path: Path) -> None:
    where = subprocess.run(
        [installed / "python", "-c", "import layer.config as c; print(c.BUILTIN.resolve())"],
        cwd=tmp_path, env=_clean_env(), capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip
    assert not where.startswith(str(ROOT)) and "site-packages" in where
    assert sorted(path.name for path in Path(where).iterdir()) == sorted(
        path.name for path in (ROOT / "config").glob("*.yaml")
    )


def test_help_names_built_in_configs(installed: Path, tmp_path: Path) -> None:
    result = subprocess.run(
        [installed / "layerkit", "combined", "--help"],
        cwd=tmp_path, env=_clean_env(), capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "built-in name" in result.stdout and "working directory" in result.stdout


@pytest.fixture
def project(tmp_path: Path) -> Iterator[Path]:
    """The user's own project directory: one ASGI module, no config/ anywhere."""
    (tmp_path / "myproject_asgi.py").write_text(USER_APP)
    yield tmp_path


def test_combined_serves_the_users_app_from_its_directory(installed: Path, project: Path) -> None:
    port, admin = free_port(), free_port()
    command = [
        installed / "layerkit", "combined", "--config", "inmemory",
        "--app", "myproject_asgi:application", "--port", str(port), "--admin-port", str(admin),
    ]  # fmt: skip
    log = project / "layerkit.log"
    with log.open("wb") as out:
        process = subprocess.Popen(command, cwd=project, env=_clean_env(), stdout=out, stderr=out)
    try:
        wait_until(lambda: _get(f"http://127.0.0.1:{admin}/readyz") == 200, "readiness")
        reply = httpx.get(f"http://127.0.0.1:{port}/anything", timeout=10)
        assert reply.status_code == 200 and reply.content == b"hello from my project"
    finally:
        process.terminate()
        assert process.wait(timeout=30) == 0, log.read_text()


def test_a_relative_path_is_read_from_the_working_directory(installed: Path, project: Path) -> None:
    (project / "layers.yaml").write_text(
        "default:\n  BACKEND: layer.inmemory.InMemoryChannelLayer\n  CONFIG:\n    capacity: 7\n"
    )
    ok = subprocess.run(
        [installed / "layerkit", "check-config", "--config", "layers.yaml"],
        cwd=project, env=_clean_env(), capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert ok.returncode == 0, ok.stderr
    assert "capacity: 7" in ok.stdout
    missing = subprocess.run(
        [installed / "layerkit", "check-config", "--config", "config/inmemory.yaml"],
        cwd=project, env=_clean_env(), capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert missing.returncode == 2 and "config/inmemory.yaml: cannot read" in missing.stderr


def _get(url: str) -> int:
    try:
        return httpx.get(url, timeout=2).status_code
    except httpx.HTTPError:
        return 0


DJANGO_PROJECT = {
    "mysite/__init__.py": "",
    "mysite/settings.py": """
SECRET_KEY = "test-only"
ALLOWED_HOSTS = ["*"]
INSTALLED_APPS = ["channels"]
ROOT_URLCONF = "mysite.urls"
CHANNEL_LAYERS = {"default": {"BACKEND": "layer.inmemory.InMemoryChannelLayer"}}
""",
    "mysite/urls.py": """
from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from django.http import JsonResponse
from django.urls import path

def layer(request):
    name = async_to_sync(get_channel_layer().new_channel)()
    return JsonResponse({"layer": type(get_channel_layer()).__module__, "channel": name})

urlpatterns = [path("layer/", layer)]
""",
    "mysite/asgi.py": """
import os
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "mysite.settings")
from channels.routing import ProtocolTypeRouter
from django.core.asgi import get_asgi_application
application = ProtocolTypeRouter({"http": get_asgi_application()})
""",
}


def test_the_readmes_three_steps_for_a_django_project(installed: Path, tmp_path: Path) -> None:
    """README's first screen: install, CHANNEL_LAYERS in settings, `layerkit combined --app`."""
    for name, text in DJANGO_PROJECT.items():
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).write_text(text)
    port, admin = free_port(), free_port()
    command = [
        installed / "layerkit", "combined", "--app", "mysite.asgi:application",
        "--port", str(port), "--admin-port", str(admin),
    ]  # fmt: skip
    log = tmp_path / "layerkit.log"
    with log.open("wb") as out:
        process = subprocess.Popen(command, cwd=tmp_path, env=_clean_env(), stdout=out, stderr=out)
    try:
        wait_until(lambda: _get(f"http://127.0.0.1:{admin}/readyz") == 200, "readiness")
        reply = httpx.get(f"http://127.0.0.1:{port}/layer/", timeout=10)
        assert reply.status_code == 200, reply.text
        assert reply.json()["layer"] == "layer.inmemory"
    finally:
        process.terminate()
        assert process.wait(timeout=30) == 0, log.read_text()
    assert "layer 'default' from settings.CHANNEL_LAYERS (mysite.settings)" in log.read_text()


def test_the_example_copied_elsewhere_runs_on_the_installed_kit(
    installed: Path, tmp_path: Path
) -> None:
    """examples/django-chat is a project of its own: copied out of the checkout, it runs on the
    installed kit alone (docs/your-app.md, steps 1-3): its page, its static files, its chat and
    its background task."""
    import asyncio
    import json

    import websockets

    project = tmp_path / "django-chat"
    ignore = shutil.ignore_patterns("__pycache__", "staticfiles", ".wheelhouse", "db.sqlite3")
    shutil.copytree(ROOT / "examples" / "django-chat", project, ignore=ignore)
    env = _clean_env()
    static = subprocess.run(
        [installed / "python", "manage.py", "collectstatic", "--noinput"],
        cwd=project, env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert static.returncode == 0, static.stderr
    port, admin = free_port(), free_port()
    command = [
        installed / "layerkit", "combined", "--app", "mysite.asgi:application",
        "--channels", "chat-tasks", "--port", str(port), "--admin-port", str(admin),
    ]  # fmt: skip
    log = tmp_path / "layerkit.log"
    with log.open("wb") as out:
        process = subprocess.Popen(command, cwd=project, env=env, stdout=out, stderr=out)

    async def chat() -> list[str]:
        url = f"ws://127.0.0.1:{port}/ws/chat/lobby/"
        async with websockets.connect(url, origin=f"http://127.0.0.1:{port}") as ws:  # type: ignore[arg-type]
            heard = []
            for text in ("hello", "/shout hi"):
                await ws.send(json.dumps({"message": text}))
                heard.append(json.loads(await asyncio.wait_for(ws.recv(), 10))["message"])
            return heard

    try:
        wait_until(lambda: _get(f"http://127.0.0.1:{admin}/readyz") == 200, "readiness")
        page = httpx.get(f"http://127.0.0.1:{port}/chat/lobby/", timeout=10)
        assert page.status_code == 200, page.text
        script = page.text.split('<script src="', 1)[1].split('"', 1)[0]
        assert script.startswith("/static/chat/room.")  # collected, hashed, served
        assert httpx.get(f"http://127.0.0.1:{port}{script}", timeout=10).status_code == 200
        assert asyncio.run(chat()) == ["hello", "bot: HI!"]
        assert "from settings.CHANNEL_LAYERS (mysite.settings)" in log.read_text()
    finally:
        process.terminate()
        assert process.wait(timeout=30) == 0, log.read_text()
