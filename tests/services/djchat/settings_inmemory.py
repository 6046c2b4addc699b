"""One process (``layerkit combined``), its layer in the settings only (no $LAYER_CONFIG)."""

from __future__ import annotations

from tests.services.djchat.base import *  # noqa: F403

CHANNEL_LAYERS = {
    "default": {"BACKEND": "layer.inmemory.InMemoryChannelLayer", "CONFIG": {"capacity": 50}},
}
