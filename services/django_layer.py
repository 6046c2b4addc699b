"""A Django project's ``settings.CHANNEL_LAYERS`` as the services' layer: one source of truth.

The app's consumers get their layer from Channels, which builds it from settings. Were the
services to read another config, the two could disagree (Django left on its in-memory layer
while the workers share Redis: each worker's chat becomes its own island, silently). So in a
Django project the services take the settings' layer, the very instance Channels hands the app
(one Redis pool; in ``combined`` one in-memory store that background channels share too), and a
``--config`` that says otherwise is refused. This module is the kit's one adapter to Django and
Channels; it imports neither unless the process is a Django project.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from typing import Any

from layer.base import BaseChannelLayer
from layer.config import LayerSpec, parse
from layer.exceptions import ConfigError


def is_django_project() -> bool:
    """``DJANGO_SETTINGS_MODULE`` is set (and Django installed), or the app configured Django."""
    if os.environ.get("DJANGO_SETTINGS_MODULE"):
        return importlib.util.find_spec("django") is not None
    conf = sys.modules.get("django.conf")
    return conf is not None and bool(conf.settings.configured)


def settings_specs() -> dict[str, LayerSpec] | None:
    """``settings.CHANNEL_LAYERS``, checked like a config file; None outside a Django project
    or when the settings define no channel layers."""
    if not is_django_project():
        return None
    from django.conf import settings
    from django.core.exceptions import ImproperlyConfigured

    module = os.environ.get("DJANGO_SETTINGS_MODULE") or "settings.configure()"
    try:
        layers: Any = getattr(settings, "CHANNEL_LAYERS", None)
    except (ImportError, ImproperlyConfigured) as exc:
        raise ConfigError(f"DJANGO_SETTINGS_MODULE={module}: cannot load settings: {exc}") from exc
    if layers is None:
        return None
    return parse(layers, f"settings.CHANNEL_LAYERS ({module})", expand=False)


def build(spec: LayerSpec) -> BaseChannelLayer:
    """The layer Channels gives the app for ``spec.alias`` (built here by Channels when it is not
    yet), after the kit's own checks of every key; without Channels, one built from ``spec``."""
    spec.check()
    if importlib.util.find_spec("channels") is None:
        return spec.build()
    from channels.layers import get_channel_layer

    try:
        layer = get_channel_layer(spec.alias)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{spec.source}: {spec.alias}.CONFIG: {exc}") from exc
    assert isinstance(layer, BaseChannelLayer)  # spec.check() accepted only the kit's backends
    return layer
