"""Layer configuration files: Django's ``CHANNEL_LAYERS`` shape, in YAML.

```yaml
default:
  BACKEND: layer.redis.RedisChannelLayer
  CONFIG:
    hosts: ["${REDIS_URL:-redis://127.0.0.1:6379/0}"]
    expiry: ${LAYER_EXPIRY:-60}
```

The file comes from an argument or ``LAYER_CONFIG``: the name of a config this package ships
(``inmemory``, ``ipc``, ``redis``, ``redis-sharded``, ``local-redis``: the checkout's ``config/``
files, installed as package data) or a path, relative to the working directory. ``${VAR}`` and
``${VAR:-default}`` are substituted in string values; a value that is exactly one ``${...}`` is
then read as JSON, so numbers, booleans and lists can be injected too; anything that is not JSON
stays the string it is (YAML would turn ``0123`` into 83 and ``on`` into True: an encryption key
or a password must come through unchanged). Every mistake raises :class:`ConfigError` naming the
file, the key and what was expected.
"""

from __future__ import annotations

import importlib
import inspect
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from layer.base import BaseChannelLayer
from layer.exceptions import ConfigError, InvalidChannelLayerError

ENV_VAR = "LAYER_CONFIG"
# The shipped configs: a link to the checkout's config/ (which compose and k8s read), copied into
# the wheel as package data, so `--config redis` works from any directory.
BUILTIN = Path(__file__).with_name("configs")
_VAR_RE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
_ALIAS_KEYS = {"BACKEND", "CONFIG"}
BACKENDS = (
    "layer.inmemory.InMemoryChannelLayer",
    "layer.ipc.IPCChannelLayer",
    "layer.redis.RedisChannelLayer",
    "layer.local.LocalRedisChannelLayer",
)


@dataclass(frozen=True)
class LayerSpec:
    """One alias of a config file: which backend, with which keyword arguments."""

    alias: str
    backend: str
    config: dict[str, Any] = field(default_factory=dict)
    source: str = "<dict>"

    def backend_class(self) -> type[BaseChannelLayer]:
        module_name, _, class_name = self.backend.rpartition(".")
        where = f"{self.source}: {self.alias}.BACKEND"
        if not module_name:
            raise InvalidChannelLayerError(f"{where}: {self.backend!r} is not a dotted path")
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:
            raise InvalidChannelLayerError(
                f"{where}: cannot import {module_name!r} ({exc}); is its extra installed?"
            ) from exc
        cls = getattr(module, class_name, None)
        if not (isinstance(cls, type) and issubclass(cls, BaseChannelLayer)):
            raise InvalidChannelLayerError(
                f"{where}: {self.backend!r} is not a channel layer class of this kit; use one "
                f"of {', '.join(BACKENDS)}"
            )
        return cls

    def check(self) -> type[BaseChannelLayer]:
        """The backend class, once every ``CONFIG`` key is known to be one of its options."""
        cls = self.backend_class()
        where = f"{self.source}: {self.alias}.CONFIG"
        _check_keys(cls, self.config, where)
        # A composed backend (layer.local) takes a CONFIG mapping per part: checked the same way.
        for name, part in getattr(cls, "parts", {}).items():
            options = self.config.get(name)
            if isinstance(options, dict):
                _check_keys(part, options, f"{where}.{name}", _known_options(cls))
        return cls

    def build(self) -> BaseChannelLayer:
        """Instantiate the backend; bad keys or values become one :class:`ConfigError`."""
        cls = self.check()
        try:
            return cls(**self.config)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"{self.source}: {self.alias}.CONFIG: {exc}") from exc

    def differences(self, other: LayerSpec) -> list[str]:
        """What ``other`` sets otherwise: ``BACKEND`` and/or ``CONFIG.<key>`` (values left out:
        they may hold passwords). Lists and tuples compare equal, as YAML and Python write them."""
        found = ["BACKEND"] if self.backend != other.backend else []
        for key in sorted(set(self.config) | set(other.config)):
            mine, theirs = (_canonical(spec.config.get(key)) for spec in (self, other))
            if key not in self.config or key not in other.config or mine != theirs:
                found.append(f"CONFIG.{key}")
        return found


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=repr)


def _check_keys(
    cls: type, config: dict[str, Any], where: str, taken: frozenset[str] | set[str] = frozenset()
) -> None:
    """Every key of ``config`` must be an option of ``cls`` (less those ``taken`` by the
    backend that composes it: they are set at its top level)."""
    params = inspect.signature(cls.__init__).parameters  # type: ignore[misc]
    accepts_any = any(p.kind is p.VAR_KEYWORD for p in params.values())
    known = _known_options(cls) - taken
    for key in config:
        if key in taken:
            raise ConfigError(f"{where}.{key}: set {key} at the top level (it applies to both)")
        if key not in known and not (accepts_any and not known):
            raise ConfigError(
                f"{where}.{key}: unknown option for {cls.__name__}; "
                f"expected one of {', '.join(sorted(known))}"
            )


def _known_options(cls: type) -> set[str]:
    """Keyword options along the constructor chain (backends pass ``**options`` to the base)."""
    known: set[str] = set()
    for klass in cls.__mro__:
        init = klass.__dict__.get("__init__")
        if init is None or klass is object:
            continue
        for name, param in inspect.signature(init).parameters.items():
            if name != "self" and param.kind in (param.KEYWORD_ONLY, param.POSITIONAL_OR_KEYWORD):
                known.add(name)
    return known


def substitute(value: Any, where: str, environ: dict[str, str] | os._Environ[str]) -> Any:
    """Replace ``${VAR}``/``${VAR:-default}`` in every string of ``value``."""
    if isinstance(value, dict):
        return {
            _interpolate(k, where, environ) if isinstance(k, str) else k: substitute(
                v, f"{where}.{k}", environ
            )
            for k, v in value.items()
        }
    if isinstance(value, list):
        return [substitute(v, f"{where}[{i}]", environ) for i, v in enumerate(value)]
    if not isinstance(value, str) or "${" not in value:
        return value
    text = _interpolate(value, where, environ)
    if _VAR_RE.fullmatch(value):  # a lone ${VAR} may inject a number, list or mapping
        try:
            return json.loads(text)
        except ValueError:
            return text
    return text


def _interpolate(text: str, where: str, environ: dict[str, str] | os._Environ[str]) -> str:
    def replace(match: re.Match[str]) -> str:
        name, default = match.group(1), match.group(2)
        if name in environ:
            return environ[name]
        if default is None:
            raise ConfigError(f"{where}: environment variable {name} is not set and has no default")
        return default

    return _VAR_RE.sub(replace, text)


def parse(
    data: Any, source: str, environ: dict[str, str] | None = None, expand: bool = True
) -> dict[str, LayerSpec]:
    """Validate the ``CHANNEL_LAYERS``-shaped mapping ``data`` read from ``source``; ``expand``
    substitutes ``${VAR}`` (files do; Django settings do not: Channels takes them as written)."""
    env = os.environ if environ is None else environ
    if not isinstance(data, dict) or not data:
        raise ConfigError(
            f"{source}: expected a mapping of layer aliases (e.g. 'default:') to "
            f"{{BACKEND, CONFIG}}, got {type(data).__name__}"
        )
    specs: dict[str, LayerSpec] = {}
    for alias, body in data.items():
        if not isinstance(body, dict):
            raise ConfigError(f"{source}: {alias}: expected a mapping with BACKEND and CONFIG")
        unknown = set(body) - _ALIAS_KEYS
        if unknown:
            raise ConfigError(
                f"{source}: {alias}.{sorted(unknown)[0]}: unknown key; expected BACKEND and CONFIG"
            )
        backend = body.get("BACKEND")
        if not isinstance(backend, str):
            raise ConfigError(f"{source}: {alias}.BACKEND: expected a dotted class path string")
        config = body.get("CONFIG") or {}
        if not isinstance(config, dict):
            raise ConfigError(f"{source}: {alias}.CONFIG: expected a mapping of options")
        if expand:
            config = substitute(config, f"{source}: {alias}.CONFIG", env)
        specs[str(alias)] = LayerSpec(str(alias), backend, config, source)
    return specs


def builtin_names() -> list[str]:
    """Names of the shipped configs, for ``--config NAME``."""
    return sorted(path.stem for path in BUILTIN.glob("*.yaml"))


def resolve(path: str | os.PathLike[str]) -> Path:
    """A shipped config's name, or else a path (relative ones from the working directory).

    A name has no ``/`` and no ``.yaml``/``.yml`` suffix, so which one is meant never depends on
    what the working directory happens to hold.
    """
    text = os.fspath(path)
    if "/" in text or os.sep in text or text.endswith((".yaml", ".yml")):
        return Path(text)
    builtin = BUILTIN / f"{text}.yaml"
    if not builtin.is_file():
        raise ConfigError(
            f"{text!r} is not a built-in layer config (those are {', '.join(builtin_names())}); "
            f"a file needs a path, e.g. ./{text}.yaml"
        )
    return builtin


def load(path: str | os.PathLike[str] | None = None) -> dict[str, LayerSpec]:
    """Read a config (``path`` or ``$LAYER_CONFIG``: a shipped config's name or a file)."""
    if path is None:
        path = os.environ.get(ENV_VAR)
        if not path:
            raise ConfigError(f"no layer config given: pass a path or set {ENV_VAR}")
    file = resolve(path)
    try:
        text = file.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{file}: cannot read layer config: {exc.strerror or exc}") from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{file}: not UTF-8 text (byte {exc.start}); save it as UTF-8") from exc
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{file}: not valid YAML: {exc}") from exc
    return parse(data, str(file))


def get_channel_layer(
    alias: str = "default", path: str | os.PathLike[str] | None = None
) -> BaseChannelLayer:
    """Build the layer ``alias`` from a config file."""
    specs = load(path)
    if alias not in specs:
        raise InvalidChannelLayerError(
            f"{specs[next(iter(specs))].source}: no layer alias {alias!r}; "
            f"defined: {', '.join(specs)}"
        )
    return specs[alias].build()
