"""The process's channel layer, for applications running inside the services.

An app served by ``layerkit worker``/``combined`` shares the layer the service already built (one
connection pool, one in-memory store in combined mode). Run any other way (e.g. plain uvicorn) it
gets one built from ``LAYER_CONFIG``/``LAYER_ALIAS``, as Channels builds one from settings.
"""

from __future__ import annotations

import os

from layer.base import BaseChannelLayer
from layer.config import get_channel_layer

_layer: BaseChannelLayer | None = None


def set_layer(layer: BaseChannelLayer | None) -> None:
    global _layer
    _layer = layer


def get_layer() -> BaseChannelLayer:
    global _layer
    if _layer is None:
        path = os.environ.get("LAYER_CONFIG") or "inmemory"
        _layer = get_channel_layer(os.environ.get("LAYER_ALIAS", "default"), path)
    return _layer


def role() -> str:
    """Which service runs this process (``KIT_ROLE``, set by the CLI), else ``"app"``."""
    return os.environ.get("KIT_ROLE", "app")
