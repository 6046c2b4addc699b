"""``layerkit``: one command for every role; each option also comes from an environment variable.

Exit codes: 0 after a clean (drained) shutdown, 2 for bad configuration or usage, with a message
that names what was wrong.
"""

from __future__ import annotations

import asyncio
import importlib
import logging
import os
import sys
from collections.abc import Sequence
from typing import Any, NoReturn

from layer.base import BaseChannelLayer
from layer.config import LayerSpec, load
from layer.exceptions import AccessRefused, ConfigError
from services import django_layer, logs, memory, options
from services.instance import ASGIApp
from services.limits import Limits
from services.redact import redacted
from services.runner import Settings, bind, reachable, serve

log = logging.getLogger("layerkit")
CROSS_PROCESS_CONFIGS = "--config ipc (one host), --config redis or --config redis-sharded"


def _fail(message: str) -> NoReturn:
    print(f"layerkit: error: {message}", file=sys.stderr)
    sys.exit(2)


def _alias(specs: dict[str, LayerSpec], alias: str) -> LayerSpec:
    if alias not in specs:
        source = next(iter(specs.values())).source
        raise ConfigError(f"{source}: no layer alias {alias!r}; defined: {', '.join(specs)}")
    return specs[alias]


def _layer(values: dict[str, Any], role: str) -> tuple[LayerSpec, BaseChannelLayer]:
    """A Django project's settings.CHANNEL_LAYERS, else the config (``inmemory`` for combined);
    both given must agree, or the app and the services would talk over different layers."""
    alias = values["alias"]
    given = _alias(load(values["config"]), alias) if values["config"] else None
    settings = django_layer.settings_specs()
    if settings is None:
        if given is None:
            if role not in ("combined", "check-config"):
                raise ConfigError(
                    f"{role} needs a layer config: --config NAME|PATH, $LAYER_CONFIG, or a "
                    "Django project's settings.CHANNEL_LAYERS"
                )
            given = _alias(load("inmemory"), alias)
        return given, given.build()
    spec = _alias(settings, alias)
    differ = spec.differences(given) if given is not None else []
    if given is not None and differ:
        raise ConfigError(
            f"--config/$LAYER_CONFIG ({given.source}) and {spec.source} disagree on "
            f"{', '.join(differ)} of layer {alias!r}, and the app and the services must share "
            "one layer: leave out --config/$LAYER_CONFIG to use the settings, or make them equal"
        )
    log.info("layer %r from %s", alias, spec.source)
    return spec, django_layer.build(spec)


def load_app(path: str) -> ASGIApp:
    """Import ``module:attribute`` (attributes may be dotted)."""
    module_name, _, attr = path.partition(":")
    if not module_name or not attr:
        raise ConfigError(f"--app must look like module:attribute, got {path!r}")
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
    config = redacted(spec.config)
    shards = [_describe(host) for host in config.get("hosts") or []]
    if not shards:
        shards = layer.shard_names()
    if shards:
        print(f"shards:  {len(shards)}")
        for index, shard in enumerate(shards):
            print(f"  [{index}] {shard}")
    else:
        where = "local" if layer.cross_process else "this process only"
        print(f"shards:  1 ({where})")
    for key, value in sorted(config.items()):
        if key != "hosts":
            if isinstance(value, dict) and isinstance(value.get("hosts"), list):
                value = {**value, "hosts": [_describe(host) for host in value["hosts"]]}
            print(f"  {key}: {value}")
    for line in layer.sizing():
        print(line)


async def _reach(layer: BaseChannelLayer) -> str:
    """Print whether the storage answers; return why it refused us ("" if it did not)."""
    try:
        why = await reachable(layer)
    except AccessRefused as exc:
        return str(exc)
    finally:
        await layer.discard()
    print(f"reach:   {f'not now ({why})' if why else 'ok'}")
    return ""


def _describe(shard: Any) -> str:
    """A shard as the config gives it (URL, pair or dict of options), secrets masked."""
    if isinstance(shard, dict):
        options = dict(shard)
        address = options.pop("address", None)
        extra = ", ".join(f"{k}: {v}" for k, v in options.items() if v not in (None, ""))
        if address is None:
            return extra
        return f"{address} ({extra})" if extra else str(address)
    return str(shard)


def main(argv: Sequence[str] | None = None) -> None:
    parser = options.parser()
    args = parser.parse_args(argv)
    values = options.resolve(args, parser)
    os.environ["KIT_ROLE"] = args.role
    logs.setup(values["log_format"], values["log_level"])
    sys.path.insert(0, os.getcwd())  # the user's project: its app and its Django settings
    settings = _settings(args.role, values)
    if args.role != "check-config":
        memory.keep_freed_memory()
    try:
        # Ports first: one in use is an error naming its option before anything is built.
        ports = bind(settings) if args.role != "check-config" else None
        # The app next: importing a Django project's configures the settings that name the layer,
        # and its LOGGING, which must not silence the kit's own lines: set those up again.
        app = load_app(values["app"]) if args.role in ("worker", "combined") else None
        logs.setup(values["log_format"], values["log_level"])
        spec, layer = _layer(values, args.role)
        if ports is None:
            check_config(spec, layer)
            refused = _run(_reach(layer))
            if refused:
                _fail(refused)
            return
        if args.role != "combined" and not layer.cross_process:
            _fail(
                f"{spec.source} uses {spec.backend}, which cannot cross processes, so a separate "
                f"{args.role} could never reach its peers. Use `layerkit combined` for one "
                f"process, or a cross-process config: {CROSS_PROCESS_CONFIGS}."
            )
    except ConfigError as exc:
        _fail(str(exc))
    sys.exit(_run(serve(settings, layer, app, ports)))


def _settings(role: str, values: dict[str, Any]) -> Settings:
    return Settings(
        role=role,
        host=values["host"],
        port=values["port"],
        admin_port=values["admin_port"],
        admin_host=values["admin_host"],
        concurrency=values["concurrency"],
        max_connections=values["max_connections"],
        channels=values["channels"],
        drain_timeout=values["drain_timeout"],
        pickup_timeout=values["pickup_timeout"],
        heartbeat=values["heartbeat"],
        root_path=values["root_path"],
        ssl_certfile=values["ssl_certfile"],
        ssl_keyfile=values["ssl_keyfile"],
        access_log=values["access_log"],
        forwarded_allow_ips=values["forwarded_allow_ips"],
        limits=Limits(
            max_header_size=values["max_header_size"],
            header_timeout=values["header_timeout"],
            body_timeout=values["body_timeout"],
            max_body_size=values["max_body_size"],
            keep_alive_timeout=values["keep_alive_timeout"],
            max_ws_message=values["max_ws_message"],
        ),
    )


def _run(coro: Any) -> Any:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvicorn[standard] brings it
        return asyncio.run(coro)
    return uvloop.run(coro)
