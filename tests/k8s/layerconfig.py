"""What channel layer a kit container will build, read from the rendered manifests.

Follows ``LAYER_CONFIG`` through the container's volume mounts to the ConfigMap key holding
the file, then parses it with the kit's own :func:`layer.config.parse` and the container's
resolved environment: exactly the substitution ``layerkit`` performs at start-up.
"""

from __future__ import annotations

import posixpath

import yaml

from layer.config import LayerSpec, parse
from layer.exceptions import ConfigError
from tests.k8s.model import Container, Obj, find


def config_text(objects: list[Obj], container: Container, path: str) -> str:
    """The content the container sees at ``path``, if a ConfigMap volume provides it."""
    for mount in container.spec.get("volumeMounts") or []:
        root = str(mount.get("mountPath", "")).rstrip("/")
        if not path.startswith(root + "/"):
            continue
        volume = container.pod.volume(str(mount.get("name"))) or {}
        source = volume.get("configMap")
        if source is None:
            continue
        relative = posixpath.relpath(path, root)
        if mount.get("subPath"):
            raise LookupError(f"{path}: subPath mounts of ConfigMaps do not receive updates")
        items = source.get("items")
        key = (
            next((i["key"] for i in items if i.get("path") == relative), None)
            if items
            else relative
        )
        cm = find(objects, "ConfigMap", str(source.get("name")))
        if cm is None:
            raise LookupError(
                f"volume {mount.get('name')} names missing ConfigMap {source.get('name')!r}"
            )
        data = cm.get("data") or {}
        if key not in data:
            raise LookupError(f"ConfigMap {source.get('name')} has no key {key!r} for {path}")
        return str(data[key])
    raise LookupError(f"{path} is not inside any ConfigMap volume mounted into the container")


def layer_spec(objects: list[Obj], container: Container) -> LayerSpec:
    """The layer alias ``LAYER_ALIAS`` (default ``default``) of the container's config file.

    Raises ``LookupError``/``ConfigError`` with a message naming what is wrong.
    """
    path = container.env.get("LAYER_CONFIG")
    if not path:
        raise LookupError("LAYER_CONFIG is not set: the layer config must come from the ConfigMap")
    text = config_text(objects, container, path)
    specs = parse(yaml.safe_load(text), path, environ=container.env)
    alias = container.env.get("LAYER_ALIAS", "default")
    if alias not in specs:
        raise ConfigError(f"{path}: no layer alias {alias!r}")
    return specs[alias]
