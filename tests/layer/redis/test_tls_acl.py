"""TLS-ready: the kit's Redis (its image's entrypoint and ACL) on a TLS-only port that also
requires client certificates, every certificate made in the test with the ``openssl`` command;
the layer logs in over ``rediss://`` as the ACL user and works; without a client certificate,
without the CA or in plain TCP it is refused, clearly and at once."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from harness.ports import free_port
from harness.redis_server import KIT_ACL_RULES, KIT_ENTRYPOINT, RedisServer
from layer.redis import RedisChannelLayer
from tests.layer.redis_fixtures import chat_through

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="needs openssl")
PASSWORD = "tls-acl-pass"


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=30)


def _certificates(directory: Path) -> None:
    """A CA, a server certificate for 127.0.0.1 and a client certificate, both signed by it."""
    _openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
             "-keyout", "ca.key", "-out", "ca.crt", "-days", "1", "-subj", "/CN=kit test CA",
             cwd=directory)  # fmt: skip
    for name, extension in (("server", "subjectAltName=IP:127.0.0.1"), ("client", "")):
        _openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                 "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN={name}",
                 cwd=directory)  # fmt: skip
        (directory / f"{name}.ext").write_text(extension + "\n" if extension else "\n")
        _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
                 "-CAcreateserial", "-out", f"{name}.crt", "-days", "1",
                 "-extfile", f"{name}.ext", cwd=directory)  # fmt: skip


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    directory = tmp_path_factory.mktemp("tls-acl")
    _certificates(directory)
    port = free_port()
    args = ["--port", "0", "--tls-port", str(port), "--bind", "127.0.0.1", "--protected-mode",
            "yes", "--tls-cert-file", "server.crt", "--tls-key-file", "server.key",
            "--tls-ca-cert-file", "ca.crt", "--tls-auth-clients", "yes", "--save", "",
            "--appendonly", "no", "--dir", str(directory)]  # fmt: skip
    env = {
        **os.environ,
        "REDIS_USERNAME": "layer",
        "REDIS_PASSWORD": PASSWORD,
        "REDIS_ACL_FILE": str(directory / "users.acl"),
        "REDIS_ACL_RULES": str(KIT_ACL_RULES),
    }
    process = subprocess.Popen(
        [str(KIT_ENTRYPOINT), *args], cwd=directory, env=env, stdout=subprocess.DEVNULL
    )
    files = {k: str(directory / f) for k, f in
             (("ca", "ca.crt"), ("cert", "client.crt"), ("key", "client.key"))}  # fmt: skip
    query = f"ssl_ca_certs={files['ca']}&ssl_certfile={files['cert']}&ssl_keyfile={files['key']}"
    url = f"rediss://layer:{PASSWORD}@127.0.0.1:{port}/0?{query}"
    try:
        RedisServer.wait_until(redis.Redis.from_url(url), process)
        yield {"url": url, "port": str(port), **files}
    finally:
        process.kill()
        process.wait()


async def test_the_layer_works_over_tls_as_the_acl_user(tls: dict[str, str]) -> None:
    """Send, receive, a group's fan-out and flush, under the shipped key pattern (``asgi:*``)."""
    await chat_through(RedisChannelLayer(hosts=[tls["url"]], prefix="asgi"))


async def test_a_prefix_outside_the_acl_is_refused_over_tls_too(tls: dict[str, str]) -> None:
    layer = RedisChannelLayer(hosts=[tls["url"]], prefix="other")
    try:
        with pytest.raises(redis.exceptions.NoPermissionError):
            await layer.send("work.tls", {"type": "m"})
    finally:
        await layer.close()


@pytest.mark.parametrize("case", ["no client certificate", "no CA", "plain TCP"])
async def test_refused_without_what_tls_requires(case: str, tls: dict[str, str]) -> None:
    base = f"layer:{PASSWORD}@127.0.0.1:{tls['port']}/0"
    url = {
        "no client certificate": f"rediss://{base}?ssl_ca_certs={tls['ca']}",
        "no CA": f"rediss://{base}?ssl_certfile={tls['cert']}&ssl_keyfile={tls['key']}",
        "plain TCP": f"redis://{base}",
    }[case]
    layer = RedisChannelLayer(hosts=[url], prefix="asgi", socket_timeout=2)
    try:
        with pytest.raises(ConnectionError, match=r"127\.0\.0\.1"):
            await layer.send("work.tls", {"type": "m"})
    finally:
        await layer.close()
