"""The protocol server's uvicorn options, named as uvicorn names them: TLS, root_path, proxy
headers and the access log, through the whole path (protocol server, layer, worker) to the
app's scope."""

from __future__ import annotations

import json
import ssl
from pathlib import Path
from typing import Any

import httpx
import pytest
import websockets

from tests.services.conftest import StackFactory
from tests.services.procs import Service
from tests.services.test_cli import layerkit
from tests.support.certs import self_signed

pytestmark = pytest.mark.timeout(120)

SCOPE_APP = "tests.services.scopeapp:application"


@pytest.mark.parametrize("name", ["inmemory", "redis"])
async def test_tls_and_root_path_reach_the_app(
    stacks: StackFactory, tmp_path: Path, name: str
) -> None:
    cert, key = self_signed(tmp_path)
    stack = stacks(name)
    front_env = {
        "KIT_SSL_CERTFILE": str(cert),
        "KIT_SSL_KEYFILE": str(key),
        "KIT_ROOT_PATH": "/kit",
    }
    if name == "inmemory":
        front = stack.add("combined", KIT_APP=SCOPE_APP, **front_env)
    else:
        stack.add("worker", KIT_APP=SCOPE_APP)
        front = stack.add("protocol", **front_env)
    trust = ssl.create_default_context(cafile=str(cert))
    base = f"https://127.0.0.1:{front.port}"
    async with httpx.AsyncClient(verify=trust, timeout=20) as client:
        for method in ("GET", "POST"):  # body-less requests take a path of their own
            reply = await client.request(method, f"{base}/page", content=b"x" * (method == "POST"))
            assert reply.status_code == 200
            seen = reply.json()
            assert seen["scheme"] == "https" and seen["root_path"] == "/kit"
            # as uvicorn: the proxy strips /kit, the app sees the full path and the prefix
            assert seen["path"] == "/kit/page"
    async with websockets.connect(f"wss://127.0.0.1:{front.port}/ws", ssl=trust) as ws:
        seen = json.loads(await ws.recv())
        assert seen["scheme"] == "wss" and seen["root_path"] == "/kit" and seen["path"] == "/kit/ws"
    async with httpx.AsyncClient(timeout=5) as plain:
        with pytest.raises(httpx.HTTPError):  # no plain HTTP on a TLS port
            await plain.get(f"http://127.0.0.1:{front.port}/page")


def test_access_log_is_off_unless_asked(stacks: StackFactory) -> None:
    stack = stacks("inmemory")
    quiet = stack.add("combined", KIT_APP=SCOPE_APP)
    loud = stack.add("combined", KIT_APP=SCOPE_APP, KIT_ACCESS_LOG="true")
    for service in (quiet, loud):
        assert httpx.get(f"{service.url}/logged", timeout=10).status_code == 200
        assert httpx.post(f"{service.url}/posted", content=b"x", timeout=10).status_code == 200
    assert '"GET /logged HTTP/1.1" 200' not in quiet.output()
    assert '"GET /logged HTTP/1.1" 200' in loud.output()
    assert '"POST /posted HTTP/1.1" 200' in loud.output()


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--ssl-certfile", "{cert}"], "--ssl-certfile and --ssl-keyfile go together"),
        (["--ssl-certfile", "{cert}", "--ssl-keyfile", "{missing}"], "cannot load"),
        (["--ssl-certfile", "{key}", "--ssl-keyfile", "{key}"], "cannot load"),
        (["--access-log", "yes"], "unrecognized arguments: yes"),
    ],
)
def test_bad_tls_options_exit_2_before_serving(
    args: list[str], expected: str, tmp_path: Path
) -> None:
    cert, key = self_signed(tmp_path)
    paths = {"cert": cert, "key": key, "missing": tmp_path / "missing.pem"}
    result = layerkit("combined", *(arg.format(**paths) for arg in args))
    assert result.returncode == 2
    assert expected in result.stderr and "Traceback" not in result.stderr


def test_access_log_env_must_be_a_boolean() -> None:
    result = layerkit("combined", KIT_ACCESS_LOG="maybe")
    assert (
        result.returncode == 2 and "$KIT_ACCESS_LOG='maybe' is not a valid boolean" in result.stderr
    )


FORWARDED = {"X-Forwarded-Proto": "https", "X-Forwarded-For": "203.0.113.7"}


async def _seen_through(front: Service) -> list[dict[str, Any]]:
    """What the app saw of a GET, a POST and a WebSocket, each sent with X-Forwarded-*."""
    seen = []
    async with httpx.AsyncClient(base_url=front.url, headers=FORWARDED, timeout=20) as client:
        seen.append((await client.get("/page")).json())
        seen.append((await client.post("/page", content=b"body")).json())
    async with websockets.connect(f"{front.ws_url}/ws", additional_headers=FORWARDED) as ws:
        seen.append(json.loads(await ws.recv()))
    return seen


@pytest.mark.parametrize("name", ["inmemory", "redis"])
async def test_a_trusted_proxys_headers_set_scheme_and_client(
    stacks: StackFactory, name: str
) -> None:
    stack = stacks(name)
    trusting = {"KIT_FORWARDED_ALLOW_IPS": "127.0.0.1"}
    if name == "inmemory":
        front = stack.add("combined", KIT_APP=SCOPE_APP, **trusting)
    else:
        stack.add("worker", KIT_APP=SCOPE_APP)
        front = stack.add("protocol", **trusting)
    http_get, http_post, ws = await _seen_through(front)
    for seen in (http_get, http_post):
        assert seen["scheme"] == "https" and seen["client"] == ["203.0.113.7", 0]
    assert ws["scheme"] == "wss" and ws["client"] == ["203.0.113.7", 0]


@pytest.mark.parametrize("allow", [None, "10.9.9.9"])
async def test_other_clients_headers_change_nothing(
    stacks: StackFactory, allow: str | None
) -> None:
    env = {} if allow is None else {"KIT_FORWARDED_ALLOW_IPS": allow}
    front = stacks("inmemory").add("combined", KIT_APP=SCOPE_APP, **env)
    http_get, http_post, ws = await _seen_through(front)
    for seen in (http_get, http_post):
        assert seen["scheme"] == "http" and seen["client"][0] == "127.0.0.1"
    assert ws["scheme"] == "ws" and ws["client"][0] == "127.0.0.1"
