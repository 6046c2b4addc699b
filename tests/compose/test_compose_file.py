"""docker-compose.yml against the Compose Specification schema and the kit's deployment rules.

Runs without Docker: the schema (vendored from the `dclint` npm package, which ships the
upstream compose-spec schema) checks what `docker compose` v2 accepts even where only
docker-compose 1.29 is installed; 1.29 itself checks the file too when it is present.
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from tests.k8s.render import ensure_secrets

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker-compose.yml"
SCHEMA = Path(__file__).with_name("compose-spec.json")
ENV_EXAMPLE = ROOT / ".env.example"

# ${VAR}, ${VAR:-default}, ${VAR-default}; defaults here never nest another ${...}.
VARIABLE = re.compile(r"\$\{(?P<name>[A-Z0-9_]+)(?::?-(?P<default>[^}]*))?\}")

APP_SERVICES = {
    "pod-a-protocol",
    "pod-a-worker",
    "pod-b-protocol",
    "pod-b-worker",
    "ipc-protocol",
    "ipc-worker",
    "local-a-protocol",
    "local-a-worker",
    "local-b-protocol",
    "local-b-worker",
    "combined",
}
LOCAL_PODS = ("local-a", "local-b")
REDIS_SERVICES = {"redis-0", "redis-1", "redis-2"}


def raw_text() -> str:
    return COMPOSE.read_text()


def interpolate(text: str, env: dict[str, str] | None = None) -> str:
    """What compose does to the file with an empty environment: every variable's default."""
    env = env or {}

    def value(match: re.Match[str]) -> str:
        name = match["name"]
        if name in env:
            return env[name]
        if match["default"] is None:
            raise AssertionError(f"${{{name}}} has no default in docker-compose.yml")
        return match["default"]

    return VARIABLE.sub(value, text)


@pytest.fixture(scope="module")
def schema() -> dict[str, Any]:
    return json.loads(SCHEMA.read_text())  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load(interpolate(raw_text()))  # type: ignore[no-any-return]


def test_no_version_key() -> None:
    assert "version" not in yaml.safe_load(raw_text())


@pytest.mark.parametrize("interpolated", [False, True], ids=["raw", "interpolated"])
def test_matches_compose_spec_schema(schema: dict[str, Any], interpolated: bool) -> None:
    text = interpolate(raw_text()) if interpolated else raw_text()
    validator = jsonschema.Draft7Validator(schema)
    errors = [
        f"{'/'.join(map(str, e.absolute_path))}: {e.message}"
        for e in validator.iter_errors(yaml.safe_load(text))
    ]
    assert errors == []


def test_schema_rejects_what_v2_rejects(schema: dict[str, Any]) -> None:
    """The vendored schema is strict enough to matter: an unknown service key fails."""
    bad = yaml.safe_load(interpolate(raw_text()))
    bad["services"]["combined"]["restart_policy"] = "always"
    assert not jsonschema.Draft7Validator(schema).is_valid(bad)


def test_every_variable_is_in_env_example_with_the_same_default() -> None:
    example = dict(
        line.split("=", 1)
        for line in ENV_EXAMPLE.read_text().splitlines()
        if line and not line.startswith("#")
    )
    used = {m["name"]: m["default"] for m in VARIABLE.finditer(raw_text())}
    assert sorted(used) == sorted(example)
    assert {name: example[name] for name in used} == used


def test_services_follow_the_contract(compose: dict[str, Any]) -> None:
    assert set(compose["services"]) == APP_SERVICES | REDIS_SERVICES


def test_every_container_is_locked_down(compose: dict[str, Any]) -> None:
    for name, service in compose["services"].items():
        assert service["read_only"] is True, name
        assert service["cap_drop"] == ["ALL"], name
        assert "no-new-privileges:true" in service["security_opt"], name
        assert service["restart"] in {"always", "unless-stopped", "on-failure"}, name
        assert service["healthcheck"]["test"], name
        assert {"mem_limit", "cpus", "pids_limit"} <= set(service), name
        assert service["tmpfs"], name


def test_redis_is_internal_and_unpublished(compose: dict[str, Any]) -> None:
    shards = compose["networks"]["shards"]
    assert shards["internal"] is True
    assert shards["driver_opts"] == {"com.docker.network.bridge.inhibit_ipv4": "true"}
    for name in REDIS_SERVICES:
        service = compose["services"][name]
        assert "ports" not in service
        assert service["networks"] == ["shards"]


def test_ports_are_published_on_loopback_only(compose: dict[str, Any]) -> None:
    published = {name: s["ports"] for name, s in compose["services"].items() if "ports" in s}
    assert set(published) == {
        "pod-a-protocol",
        "pod-b-protocol",
        "ipc-protocol",
        "local-a-protocol",
        "local-b-protocol",
        "combined",
    }
    host_ports = []
    for ports in published.values():
        for port in ports:
            assert port.startswith("127.0.0.1:")
            assert port.endswith((":8000", ":8081"))
            host_ports.append(port.split(":")[1])
    assert len(set(host_ports)) == len(host_ports)  # each pod its own


def test_dependencies_wait_for_health(compose: dict[str, Any]) -> None:
    for name, service in compose["services"].items():
        for dependency in service.get("depends_on", {}).values():
            assert dependency == {"condition": "service_healthy"}, name
    for pod in ("pod-a", "pod-b", *LOCAL_PODS):
        for role in ("protocol", "worker"):
            assert set(compose["services"][f"{pod}-{role}"]["depends_on"]) >= REDIS_SERVICES


def test_ipc_pod_shares_one_ipc_namespace(compose: dict[str, Any]) -> None:
    protocol = compose["services"]["ipc-protocol"]
    worker = compose["services"]["ipc-worker"]
    assert protocol["ipc"] == "shareable"
    assert protocol["shm_size"]
    assert worker["ipc"] == "service:ipc-protocol"
    assert worker["network_mode"] == "none"  # the shared /dev/shm is its only channel
    assert protocol["environment"]["IPC_PREFIX"] == worker["environment"]["IPC_PREFIX"]


@pytest.mark.parametrize("pod", LOCAL_PODS)
def test_local_pod_shares_its_own_ipc_namespace_and_the_shards(
    compose: dict[str, Any], pod: str
) -> None:
    services = compose["services"]
    protocol, worker = services[f"{pod}-protocol"], services[f"{pod}-worker"]
    assert protocol["ipc"] == "shareable"
    assert protocol["shm_size"] == services["ipc-protocol"]["shm_size"]
    assert worker["ipc"] == f"service:{pod}-protocol"  # its own pod's, not the other's
    assert worker["depends_on"][f"{pod}-protocol"] == {"condition": "service_healthy"}
    assert protocol["networks"] == ["front", "shards"]
    assert worker["networks"] == ["shards"]  # groups and other pods' replies: Redis only
    for service in (protocol, worker):
        env = service["environment"]
        assert env["LAYER_CONFIG"] == "/app/config/local-redis.yaml"
        assert env["IPC_PREFIX"] == protocol["environment"]["IPC_PREFIX"]
        shards = {k: v for k, v in env.items() if k.startswith("REDIS_SHARD_")}
        assert shards == {
            k: v for k, v in services["pod-a-worker"]["environment"].items() if k in shards
        }
        assert len(shards) == len(REDIS_SERVICES)


def test_local_pods_keep_apart_from_the_redis_pods_keys(compose: dict[str, Any]) -> None:
    """Same shards, another key prefix: a local pod's worker's hello must not reach pod A."""
    prefixes = {
        name: service["environment"].get("LAYER_PREFIX", "asgi")  # the configs' default
        for name, service in compose["services"].items()
        if name.startswith(("pod-", "local-"))
    }
    local = {prefixes[f"{pod}-{role}"] for pod in LOCAL_PODS for role in ("protocol", "worker")}
    redis = {prefixes[f"pod-{pod}-{role}"] for pod in "ab" for role in ("protocol", "worker")}
    assert len(local) == len(redis) == 1 and not local & redis


def test_layer_configs_exist(compose: dict[str, Any]) -> None:
    for name in APP_SERVICES:
        config = compose["services"][name]["environment"]["LAYER_CONFIG"]
        assert config.startswith("/app/config/")
        assert (ROOT / "config" / Path(config).name).is_file(), config


@pytest.mark.parametrize(
    "env_file", [[], ["--env-file", str(ENV_EXAMPLE)]], ids=["defaults", "env"]
)
def test_docker_compose_1_accepts_it(env_file: list[str]) -> None:
    ensure_secrets()  # the env file compose reads the Redis password from
    result = subprocess.run(
        ["docker-compose", *env_file, "--file", str(COMPOSE), "config", "--quiet"],
        capture_output=True,
        text=True,
        check=False,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr


REDIS_CLIENTS = APP_SERVICES - {"ipc-protocol", "ipc-worker", "combined"}
SECRETS_ENV = ".secrets/redis.env"


def test_redis_requires_the_acl_user(compose: dict[str, Any]) -> None:
    """Protected mode on, the ACL user's password from the env file (never in the file
    itself), and a health check that wants PONG, not redis-cli's exit code."""
    for name in REDIS_SERVICES:
        service = compose["services"][name]
        command = service["command"]
        assert command[command.index("--protected-mode") + 1] == "yes", name
        assert service["env_file"] == SECRETS_ENV, name
        assert "REDIS_PASSWORD" not in service["environment"], name
        assert set(service["environment"]["REDIS_KEY_PATTERNS"].split()) == {"asgi:*", "local:*"}
        assert service["healthcheck"]["test"] == ["CMD", "redis-ready", "6379"], name
    assert not re.search(r"^\s*-?\s*REDIS_PASSWORD\s*[:=]", raw_text(), re.MULTILINE)


def test_only_redis_clients_get_the_password(compose: dict[str, Any]) -> None:
    """The layer's clients log in as the ACL user; the IPC pod and combined never see it."""
    for name in APP_SERVICES:
        service = compose["services"][name]
        if name in REDIS_CLIENTS:
            assert service.get("env_file") == SECRETS_ENV, name
            assert service["environment"]["REDIS_USERNAME"] == "layer", name
        else:
            assert "env_file" not in service and "REDIS_USERNAME" not in service["environment"]


def test_logs_rotate(compose: dict[str, Any]) -> None:
    for name, service in compose["services"].items():
        logging = service["logging"]
        assert logging["driver"] == "json-file", name
        assert logging["options"]["max-size"] and int(logging["options"]["max-file"]) >= 1, name


def test_app_ports_bind_dual_stack(compose: dict[str, Any]) -> None:
    """ "::" (one dual-stack socket, services/runner.py) for the app and admin ports."""
    for name in APP_SERVICES:
        env = compose["services"][name]["environment"]
        assert env["KIT_HOST"] == env["KIT_ADMIN_HOST"] == "::", name
