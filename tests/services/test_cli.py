"""The ``layerkit`` command line: help, check-config, usage errors and environment variables."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from harness.ports import free_port
from tests.services.procs import ROOT, Service

pytestmark = pytest.mark.timeout(60)


def layerkit(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "services", *args],
        cwd=ROOT,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=30,
    )


def test_help_lists_roles_and_env_vars() -> None:
    top = layerkit("--help")
    assert top.returncode == 0
    for role in ("protocol", "worker", "combined", "check-config"):
        assert role in top.stdout
    worker = layerkit("worker", "--help").stdout
    for env in ("LAYER_CONFIG", "KIT_CONCURRENCY", "KIT_DRAIN_TIMEOUT", "KIT_LOG_FORMAT"):
        assert env in worker


def test_check_config_inmemory() -> None:
    result = layerkit("check-config", "--config", "config/inmemory.yaml")
    assert result.returncode == 0, result.stderr
    assert "backend: layer.inmemory.InMemoryChannelLayer" in result.stdout
    assert "shards:  1 (this process only)" in result.stdout


def test_check_config_ipc_says_what_the_segment_holds() -> None:
    """Slots, the largest extent, and how many messages of each size fit at once; the segment
    it created to find out is removed again."""
    prefix = f"cc{os.getpid()}"
    result = layerkit("check-config", "--config", "config/ipc.yaml", IPC_PREFIX=prefix)
    assert result.returncode == 0, result.stderr
    assert "segment: 256 MiB, 995,328 slots of 256 B" in result.stdout
    assert "extents up to 1 MiB" in result.stdout
    assert "  64 KiB:      1,944" in result.stdout and "   1 MiB:        242" in result.stdout
    assert not [name for name in os.listdir("/dev/shm") if name.startswith(f"{prefix}.")]


def test_check_config_redis_takes_hosts_from_env() -> None:
    port = free_port()  # nothing listens there: not a configuration error, reported
    result = layerkit(
        "check-config",
        REDIS_URL=f"redis://:secret@127.0.0.1:{port}/0",
        LAYER_CONFIG="config/redis.yaml",
    )
    assert result.returncode == 0, result.stderr
    assert "backend: layer.redis.RedisChannelLayer" in result.stdout
    assert f"127.0.0.1:{port}" in result.stdout and "secret" not in result.stdout
    assert f"reach:   not now (Redis shard 127.0.0.1:{port}/0 is unavailable" in result.stdout


@pytest.mark.parametrize(
    ("args", "env", "expected"),
    [
        (["worker"], {}, "needs a layer config"),
        (["combined", "--config", "config/nope.yaml"], {}, "config/nope.yaml"),
        (["combined", "--alias", "other"], {}, "no layer alias 'other'"),
        (["combined", "--app", "nosuchmodule:app"], {}, "cannot import 'nosuchmodule'"),
        (["combined", "--app", "services.demo.app"], {}, "module:attribute"),
        (["combined"], {"KIT_PORT": "eighty"}, "KIT_PORT"),
        (["combined", "--log-format", "xml"], {}, "plain or json"),
        (["combined", "--concurrency", "0"], {}, "--concurrency must be a finite number > 0"),
        (["combined", "--heartbeat", "inf"], {}, "--heartbeat must be a finite number > 0"),
        (["combined"], {"KIT_HEARTBEAT": "nan"}, "--heartbeat must be a finite number > 0"),
        (["combined", "--drain-timeout", "-1"], {}, "--drain-timeout must be a finite"),
        (["combined", "--port", "99999"], {}, "--port must be a TCP port 1-65535, got 99999"),
        (["combined", "--admin-port", "0"], {}, "--admin-port must be a TCP port"),
        (["combined", "--log-level", "bogus"], {}, "--log-level must be one of debug, info"),
        (["combined", "--config", "{latin1}"], {}, "not UTF-8 text"),
    ],
)
def test_bad_configuration_exits_2_with_a_message(
    args: list[str], env: dict[str, str], expected: str, tmp_path: Path
) -> None:
    latin1 = tmp_path / "latin1.yaml"
    latin1.write_bytes("default: caf\xe9\n".encode("latin-1"))
    result = layerkit(*(arg.format(latin1=latin1) for arg in args), **env)
    assert result.returncode == 2
    assert expected in result.stderr
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) <= 3  # usage line(s) and the one error


def test_bad_layer_option_names_the_key(tmp_path: Path) -> None:
    config = tmp_path / "bad.yaml"
    config.write_text(
        "default:\n  BACKEND: layer.inmemory.InMemoryChannelLayer\n  CONFIG:\n    capacity: -1\n"
    )
    result = layerkit("check-config", "--config", str(config))
    assert result.returncode == 2 and "capacity" in result.stderr


def test_json_logs_and_env_options() -> None:
    service = Service("combined", {"KIT_LOG_FORMAT": "json", "KIT_CONCURRENCY": "3"})
    try:
        service.start()
        service.stop()
        lines = [json.loads(line) for line in service.output().splitlines() if line.strip()]
        assert {"ts", "level", "logger", "msg", "role", "pid"} <= set(lines[0])
        assert any("concurrency 3" in line["msg"] for line in lines)
        assert all(line["role"] == "combined" for line in lines)
        assert service.process is not None and service.process.returncode == 0
    finally:
        service.discard()


def test_check_config_prints_every_shard() -> None:
    shards = {f"REDIS_SHARD_{i}": f"redis://127.0.0.{i + 1}:{free_port()}/0" for i in range(3)}
    result = layerkit("check-config", "--config", "config/redis-sharded.yaml", **shards)
    assert result.returncode == 0, result.stderr
    assert "shards:  3" in result.stdout
    for index, url in enumerate(shards.values()):
        assert f"[{index}] {url}" in result.stdout


@pytest.mark.parametrize(
    ("role", "has", "lacks"),
    [
        (
            "worker",
            ["--app", "--concurrency", "(default: 256)", "--admin-port"],
            ["--port ", "--max-header-size", "--pickup-timeout"],
        ),
        (
            "protocol",
            ["--port", "(default: 8000)", "(default: 64KiB)", "--pickup-timeout"],
            ["--app", "--concurrency"],
        ),
        ("combined", ["--app", "--port", "--concurrency", "--max-ws-message"], []),
        (
            "check-config",
            ["--config", "--alias", "(default: default)"],
            ["--host", "--port", "--admin-port", "--app"],
        ),
    ],
)
def test_each_role_lists_its_own_options_with_defaults(
    role: str, has: list[str], lacks: list[str]
) -> None:
    text = " ".join(layerkit(role, "--help").stdout.split())  # argparse wraps lines anywhere
    for wanted in has:
        assert wanted in text
    for unwanted in lacks:
        assert unwanted not in text


def test_another_roles_environment_variable_is_ignored() -> None:
    """One environment for every role of a deployment: KIT_PORT means nothing to check-config."""
    result = layerkit("check-config", KIT_PORT="eighty", KIT_CONCURRENCY="none")
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize(("option", "role"), [("--admin-port", "worker"), ("--port", "combined")])
def test_a_port_in_use_names_its_option(option: str, role: str) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        free = {"KIT_PORT": str(free_port()), "KIT_ADMIN_PORT": str(free_port())}
        result = layerkit(
            role, option, str(port), "--config", "ipc", IPC_PREFIX="never-created", **free
        )
    assert result.returncode == 2
    assert f"{option} {port} is in use on 127.0.0.1 (Address already in use)" in result.stderr
    assert "Traceback" not in result.stderr
    assert not list(Path("/dev/shm").glob("*never-created*"))  # refused before the layer is built


def test_docs_list_every_option_with_its_default() -> None:
    from services.options import OPTIONS

    text = (ROOT / "docs" / "cli.md").read_text()
    for option in OPTIONS:
        default = "see below" if option.default is None else f"`{option.shown()}`"
        assert f"| `{option.flag}` | `{option.env}` | {default} |" in text, option.flag
