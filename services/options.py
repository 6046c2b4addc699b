"""The command line's options: each role lists only its own, each has an environment variable
and says its default in ``--help``.

A value comes from the flag, else the environment variable, else the default; a bad value is a
usage error (exit 2) naming the flag or variable. An environment variable of an option a role
does not have is ignored, so one environment can serve every role of a deployment.
"""

from __future__ import annotations

import argparse
import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from layer.options import byte_size
from services.admission import CONCURRENCY, MAX_CONNECTIONS
from services.limits import Limits
from services.named_channels import channel_names
from services.relay import PICKUP_TIMEOUT

ROLES = ("protocol", "worker", "combined", "check-config")
LOG_LEVELS = ("debug", "info", "warning", "error")
_SERVED = frozenset(ROLES) - {"check-config"}  # roles that run servers
_FRONT = frozenset({"protocol", "combined"})  # roles with the HTTP/WebSocket port
_APP = frozenset({"worker", "combined"})  # roles that run the app


def boolean(text: str) -> bool:
    """``1``/``true``/``yes``/``on`` or ``0``/``false``/``no``/``off`` (any case)."""
    value = text.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise ValueError(text)


def size(text: str) -> int:
    """A byte count or a size like ``64KiB`` / ``1MB`` (binary multiples); ``0`` is 0."""
    return 0 if text.strip() == "0" else byte_size("size", text)


@dataclass(frozen=True)
class Option:
    flag: str
    env: str
    kind: Callable[[str], Any]
    default: Any  # None: resolved later (the help says how)
    help: str
    roles: frozenset[str] = frozenset(ROLES)

    @property
    def name(self) -> str:
        return self.flag[2:].replace("-", "_")

    def shown(self) -> str:
        """The default as ``--help`` shows it: sizes in KiB/MiB where they divide evenly."""
        if isinstance(self.default, bool):
            return "on" if self.default else "off"
        if self.default in ((), ""):
            return "none"
        if self.kind is size and self.default:
            for unit, factor in (("MiB", 1 << 20), ("KiB", 1 << 10)):
                if self.default % factor == 0:
                    return f"{self.default // factor}{unit}"
        return str(self.default)


_LIMITS = Limits()
OPTIONS = [
    Option("--config", "LAYER_CONFIG", str, None,
           "layer config: a built-in name (inmemory, ipc, redis, redis-sharded, local-redis) or "
           "a YAML path, relative to the working directory; default: a Django project's "
           "settings.CHANNEL_LAYERS, else (combined, check-config) inmemory"),
    Option("--alias", "LAYER_ALIAS", str, "default", "layer alias in the config or settings"),
    Option("--host", "KIT_HOST", str, "127.0.0.1", "address to bind the ports to", _SERVED),
    Option("--port", "KIT_PORT", int, 8000, "HTTP/WebSocket port", _FRONT),
    Option("--admin-port", "KIT_ADMIN_PORT", int, 8081, "admin port: /healthz /readyz /metrics",
           _SERVED),
    Option("--admin-host", "KIT_ADMIN_HOST", str, "127.0.0.1",
           "address to bind the admin port to, apart from --host: loopback keeps metrics and "
           "probes off the network (the images set 0.0.0.0 for the orchestrator's probes)",
           _SERVED),
    Option("--app", "KIT_APP", str, "services.demo.app:application",
           "ASGI app as module:attribute, imported from the working directory", _APP),
    Option("--concurrency", "KIT_CONCURRENCY", int, CONCURRENCY,
           "connections at work at once (one waiting on its client is not)", _APP),
    Option("--max-connections", "KIT_MAX_CONNECTIONS", int, MAX_CONNECTIONS,
           "connections open at once: client connections (protocol), app instances (worker)",
           _SERVED),
    Option("--channels", "KIT_CHANNELS", channel_names, (),
           "background channels to serve with the app's ChannelNameRouter, as `manage.py "
           "runworker` does: names separated by commas or spaces", _APP),
    Option("--drain-timeout", "KIT_DRAIN_TIMEOUT", float, 20.0,
           "SIGTERM grace period in seconds", _SERVED),
    Option("--pickup-timeout", "KIT_PICKUP_TIMEOUT", float, PICKUP_TIMEOUT,
           "seconds to wait for a worker to take a connection (503 / close 1013)", _FRONT),
    Option("--heartbeat", "KIT_HEARTBEAT", float, 1.0,
           "heartbeat interval in seconds; a peer is dead after 3", _SERVED),
    Option("--max-header-size", "KIT_MAX_HEADER_SIZE", size, _LIMITS.max_header_size,
           "request line + headers in bytes, e.g. 64KiB (431 above)", _FRONT),
    Option("--header-timeout", "KIT_HEADER_TIMEOUT", float, _LIMITS.header_timeout,
           "seconds to receive a whole request head (408)", _FRONT),
    Option("--body-timeout", "KIT_BODY_TIMEOUT", float, _LIMITS.body_timeout,
           "seconds a request body may stall (408)", _FRONT),
    Option("--max-body-size", "KIT_MAX_BODY_SIZE", size, _LIMITS.max_body_size,
           "request body in bytes, 0 for no limit (413 above)", _FRONT),
    Option("--keep-alive-timeout", "KIT_KEEP_ALIVE_TIMEOUT", float, _LIMITS.keep_alive_timeout,
           "idle seconds between requests on a connection", _FRONT),
    Option("--max-ws-message", "KIT_MAX_WS_MESSAGE", size, _LIMITS.max_ws_message,
           "WebSocket message in bytes (close 1009 above)", _FRONT),
    Option("--root-path", "KIT_ROOT_PATH", str, "",
           "the scope's root_path: the URL prefix a proxy serves the app under", _FRONT),
    Option("--ssl-certfile", "KIT_SSL_CERTFILE", str, "",
           "TLS certificate chain (PEM); with --ssl-keyfile, serves https and wss", _FRONT),
    Option("--ssl-keyfile", "KIT_SSL_KEYFILE", str, "", "TLS private key (PEM)", _FRONT),
    Option("--access-log", "KIT_ACCESS_LOG", boolean, False,
           "a line per request, the admin port's too (uvicorn's access log; costs CPU)", _FRONT),
    Option("--forwarded-allow-ips", "KIT_FORWARDED_ALLOW_IPS", str, "",
           "proxies (IPs, CIDRs or *, comma-separated) whose X-Forwarded-Proto/-For set the "
           "scope's scheme and client; none: the headers reach the app untouched", _FRONT),
    Option("--log-format", "KIT_LOG_FORMAT", str, "plain", "plain or json"),
    Option("--log-level", "KIT_LOG_LEVEL", str, "info", ", ".join(LOG_LEVELS)),
]  # fmt: skip
_POSITIVE = ("concurrency", "max_connections", "drain_timeout", "pickup_timeout", "heartbeat",
             "max_header_size", "header_timeout", "body_timeout", "keep_alive_timeout",
             "max_ws_message")  # fmt: skip
_PORTS = ("port", "admin_port")
_HELPS = {
    "protocol": "terminate HTTP/WebSocket and forward connections to workers",
    "worker": "run the ASGI app for connections taken from the layer",
    "combined": "protocol server and worker in one process (in-memory layer)",
    "check-config": "validate a layer config, print its backend and shards, ask them once",
}


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(
        prog="layerkit",
        description="Protocol servers and workers that speak ASGI over a channel layer.",
    )
    sub = top.add_subparsers(dest="role", required=True, metavar="{" + ",".join(ROLES) + "}")
    for role in ROLES:
        command = sub.add_parser(role, help=_HELPS[role], description=_HELPS[role])
        for option in OPTIONS:
            if role in option.roles:
                default = "" if option.default is None else f" (default: {option.shown()})"
                text = f"{option.help}{default} [${option.env}]"
                if option.kind is boolean:  # --access-log / --no-access-log, as uvicorn's
                    action = argparse.BooleanOptionalAction
                    command.add_argument(option.flag, action=action, default=None, help=text)
                else:
                    command.add_argument(option.flag, type=option.kind, default=None, help=text)
    return top


def resolve(args: argparse.Namespace, parser: argparse.ArgumentParser) -> dict[str, Any]:
    """Every option's value for ``args.role`` (the defaults of those it does not have)."""
    values: dict[str, Any] = {}
    for option in OPTIONS:
        value = getattr(args, option.name, None)
        raw = os.environ.get(option.env)
        if value is None and raw is not None and args.role in option.roles:
            try:
                value = option.kind(raw)
            except argparse.ArgumentTypeError as exc:
                parser.error(f"${option.env}: {exc}")
            except ValueError:
                parser.error(f"${option.env}={raw!r} is not a valid {option.kind.__name__}")
        values[option.name] = option.default if value is None else value
    if values["log_format"] not in ("plain", "json"):
        parser.error(f"--log-format must be plain or json, got {values['log_format']!r}")
    if values["log_level"] not in LOG_LEVELS:
        parser.error(
            f"--log-level must be one of {', '.join(LOG_LEVELS)}, got {values['log_level']!r}"
        )
    for name in _POSITIVE:
        if not 0 < values[name] < math.inf:  # also refuses nan: it compares false
            parser.error(f"{_flag(name)} must be a finite number > 0, got {values[name]!r}")
    for name in _PORTS:
        if not 0 < values[name] <= 65535:
            parser.error(f"{_flag(name)} must be a TCP port 1-65535, got {values[name]!r}")
    return values


def _flag(name: str) -> str:
    return f"--{name.replace('_', '-')}"
