"""``layerkit``: one command for every role; each option also comes from an environment variable.

Exit codes: 0 after a clean (drained) shutdown, 2 for bad configuration or usage, with a message
that names what was wrong.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import math
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any, NoReturn

from layer.base import BaseChannelLayer
from layer.config import LayerSpec, load
from layer.exceptions import ConfigError
from layer.options import byte_size
from services import logs
from services.admission import CONCURRENCY, MAX_CONNECTIONS
from services.instance import ASGIApp
from services.limits import Limits
from services.runner import Settings, serve

ROLES = ("protocol", "worker", "combined", "check-config")
LOG_LEVELS = ("debug", "info", "warning", "error")
CROSS_PROCESS_CONFIGS = "config/ipc.yaml (one host), config/redis.yaml or config/redis-sharded.yaml"


def size(text: str) -> int:
    """A byte count or a size like ``64KiB`` / ``1MB`` (binary multiples); ``0`` is 0."""
    return 0 if text.strip() == "0" else byte_size("size", text)


_LIMITS = Limits()
# (flag, env var, type, default, help); defaults of None are resolved per role.
_OPTIONS: list[tuple[str, str, Callable[[str], Any], Any, str]] = [
    ("--config", "LAYER_CONFIG", str, None, "layer YAML (combined: config/inmemory.yaml)"),
    ("--alias", "LAYER_ALIAS", str, "default", "layer alias in the config file"),
    ("--host", "KIT_HOST", str, "127.0.0.1", "address to bind the app and admin ports"),
    ("--port", "KIT_PORT", int, 8000, "HTTP/WebSocket port (protocol, combined)"),
    ("--admin-port", "KIT_ADMIN_PORT", int, 8081, "admin port: /healthz /readyz /metrics"),
    ("--app", "KIT_APP", str, "services.demo.app:application", "ASGI app as module:attribute"),
    (
        "--concurrency",
        "KIT_CONCURRENCY",
        int,
        CONCURRENCY,
        "worker: connections at work at once (one waiting on its client is not)",
    ),
    (
        "--max-connections",
        "KIT_MAX_CONNECTIONS",
        int,
        MAX_CONNECTIONS,
        "connections open at once: client connections (protocol), app instances (worker)",
    ),
    ("--drain-timeout", "KIT_DRAIN_TIMEOUT", float, 20.0, "SIGTERM grace period in seconds"),
    (
        "--pickup-timeout",
        "KIT_PICKUP_TIMEOUT",
        float,
        5.0,
        "protocol: seconds to wait for a worker",
    ),
    ("--heartbeat", "KIT_HEARTBEAT", float, 1.0, "heartbeat interval; a peer is dead after 3"),
    (
        "--max-header-size",
        "KIT_MAX_HEADER_SIZE",
        size,
        _LIMITS.max_header_size,
        "protocol: request line + headers in bytes, e.g. 64KiB (431 above)",
    ),
    (
        "--header-timeout",
        "KIT_HEADER_TIMEOUT",
        float,
        _LIMITS.header_timeout,
        "protocol: seconds to receive a whole request head (408)",
    ),
    (
        "--body-timeout",
        "KIT_BODY_TIMEOUT",
        float,
        _LIMITS.body_timeout,
        "protocol: seconds a request body may stall (408)",
    ),
    (
        "--max-body-size",
        "KIT_MAX_BODY_SIZE",
        size,
        _LIMITS.max_body_size,
        "protocol: request body in bytes, 0 for no limit (413 above)",
    ),
    (
        "--keep-alive-timeout",
        "KIT_KEEP_ALIVE_TIMEOUT",
        float,
        _LIMITS.keep_alive_timeout,
        "protocol: idle seconds between requests on a connection",
    ),
    (
        "--max-ws-message",
        "KIT_MAX_WS_MESSAGE",
        size,
        _LIMITS.max_ws_message,
        "protocol: WebSocket message in bytes (close 1009 above)",
    ),
    ("--log-format", "KIT_LOG_FORMAT", str, "plain", "plain or json"),
    ("--log-level", "KIT_LOG_LEVEL", str, "info", "debug, info, warning or error"),
]

_POSITIVE = ("concurrency", "max_connections", "drain_timeout", "pickup_timeout", "heartbeat",
             "max_header_size", "header_timeout", "body_timeout", "keep_alive_timeout",
             "max_ws_message")  # fmt: skip


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="layerkit",
        description="Protocol servers and workers that speak ASGI over a channel layer.",
    )
    sub = parser.add_subparsers(dest="role", required=True, metavar="{" + ",".join(ROLES) + "}")
    helps = {
        "protocol": "terminate HTTP/WebSocket and forward connections to workers",
        "worker": "run the ASGI app for connections taken from the layer",
        "combined": "protocol server and worker in one process (in-memory layer)",
        "check-config": "validate a layer config and print its backend and shards",
    }
    for role in ROLES:
        command = sub.add_parser(role, help=helps[role], description=helps[role])
        for flag, env, kind, default, text in _OPTIONS:
            command.add_argument(flag, type=kind, default=None, help=f"{text} [${env}]")
            command.set_defaults(**{f"_env_{flag[2:].replace('-', '_')}": (env, kind, default)})
    return parser


def _resolve(args: argparse.Namespace, parser: argparse.ArgumentParser) -> dict[str, Any]:
    """Flag, else environment variable, else default; bad env values are usage errors."""
    values: dict[str, Any] = {}
    for flag, env, kind, default, _ in _OPTIONS:
        name = flag[2:].replace("-", "_")
        value = getattr(args, name)
        if value is None and env in os.environ:
            try:
                value = kind(os.environ[env])
            except ValueError:
                parser.error(f"${env}={os.environ[env]!r} is not a valid {kind.__name__}")
        values[name] = default if value is None else value
    if values["log_format"] not in ("plain", "json"):
        parser.error(f"--log-format must be plain or json, got {values['log_format']!r}")
    if values["log_level"] not in LOG_LEVELS:
        parser.error(
            f"--log-level must be one of {', '.join(LOG_LEVELS)}, got {values['log_level']!r}"
        )
    for name in _POSITIVE:
        if not 0 < values[name] < math.inf:  # also refuses nan: it compares false
            parser.error(
                f"--{name.replace('_', '-')} must be a finite number > 0, got {values[name]!r}"
            )
    for name in ("port", "admin_port"):
        if not 0 < values[name] <= 65535:
            parser.error(
                f"--{name.replace('_', '-')} must be a TCP port 1-65535, got {values[name]!r}"
            )
    if values["config"] is None:
        if args.role in ("combined", "check-config"):
            values["config"] = "config/inmemory.yaml"
        else:
            parser.error(f"{args.role} needs a layer config: --config PATH or $LAYER_CONFIG")
    return values


def _fail(message: str) -> NoReturn:
    print(f"layerkit: error: {message}", file=sys.stderr)
    sys.exit(2)


def _spec(values: dict[str, Any]) -> LayerSpec:
    specs = load(values["config"])
    if values["alias"] not in specs:
        raise ConfigError(
            f"{values['config']}: no layer alias {values['alias']!r}; defined: {', '.join(specs)}"
        )
    return specs[values["alias"]]


def load_app(path: str) -> ASGIApp:
    """Import ``module:attribute`` (attributes may be dotted)."""
    module_name, _, attr = path.partition(":")
    if not module_name or not attr:
        raise ConfigError(f"--app must look like module:attribute, got {path!r}")
    sys.path.insert(0, os.getcwd())
    try:
        target: Any = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError(f"--app {path}: cannot import {module_name!r}: {exc}") from exc
    for part in attr.split("."):
        target = getattr(target, part, None)
        if target is None:
            raise ConfigError(f"--app {path}: module {module_name!r} has no attribute {attr!r}")
    if not callable(target):
        raise ConfigError(f"--app {path}: {attr!r} is not callable")
    app: ASGIApp = target
    return app


def check_config(spec: LayerSpec, layer: BaseChannelLayer) -> None:
    """Print what the config resolves to: backend, options and the shards it would use.

    The layer is built (so every option is validated) but not used; an IPC layer attaches to
    (or creates) its segment as any process of this config would, and removes it again if it
    created it and nobody else attached meanwhile.
    """
    print(f"config:  {spec.source}")
    print(f"alias:   {spec.alias}")
    print(f"backend: {spec.backend}")
    shards = [_describe(shard) for shard in spec.config.get("hosts") or []]
    if not shards:
        shards = [str(getattr(s, "name", s)) for s in getattr(layer, "shards", None) or []]
    if shards:
        print(f"shards:  {len(shards)}")
        for index, shard in enumerate(shards):
            print(f"  [{index}] {shard}")
    else:
        where = "this process only" if getattr(layer, "cross_process", True) is False else "local"
        print(f"shards:  1 ({where})")
    for key, value in sorted(spec.config.items()):
        if key != "hosts":
            print(f"  {key}: {value}")


def _describe(shard: Any) -> str:
    """A shard's address with any password masked."""
    text = str(shard.get("address", shard)) if isinstance(shard, dict) else str(shard)
    scheme, sep, rest = text.partition("//")
    auth, at, host = rest.rpartition("@")
    if sep and at:
        user = auth.split(":", 1)[0]
        return f"{scheme}//{user}:***@{host}"
    return text


def main(argv: Sequence[str] | None = None) -> None:
    parser = _parser()
    args = parser.parse_args(argv)
    values = _resolve(args, parser)
    os.environ["KIT_ROLE"] = args.role
    logs.setup(values["log_format"], values["log_level"])
    try:
        spec = _spec(values)
        layer = spec.build()
        if args.role == "check-config":
            check_config(spec, layer)
            _run(layer.discard())
            return
        if args.role != "combined" and getattr(layer, "cross_process", True) is False:
            _fail(
                f"{spec.source} uses {spec.backend}, which cannot cross processes, so a separate "
                f"{args.role} could never reach its peers. Use `layerkit combined` for one "
                f"process, or a cross-process config: {CROSS_PROCESS_CONFIGS}."
            )
        app = load_app(values["app"]) if args.role != "protocol" else None
    except ConfigError as exc:
        _fail(str(exc))
    settings = Settings(
        role=args.role,
        host=values["host"],
        port=values["port"],
        admin_port=values["admin_port"],
        concurrency=values["concurrency"],
        max_connections=values["max_connections"],
        drain_timeout=values["drain_timeout"],
        pickup_timeout=values["pickup_timeout"],
        heartbeat=values["heartbeat"],
        limits=Limits(
            max_header_size=values["max_header_size"],
            header_timeout=values["header_timeout"],
            body_timeout=values["body_timeout"],
            max_body_size=values["max_body_size"],
            keep_alive_timeout=values["keep_alive_timeout"],
            max_ws_message=values["max_ws_message"],
        ),
    )
    sys.exit(_run(serve(settings, layer, app)))


def _run(coro: Any) -> Any:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvicorn[standard] brings it
        return asyncio.run(coro)
    return uvloop.run(coro)
