"""One process (``layerkit combined``), its layer in the settings only (no $LAYER_CONFIG), and a
root-level LOGGING as many projects have: it must not silence the kit's own lines."""

from __future__ import annotations

from tests.services.djchat.base import *  # noqa: F403

CHANNEL_LAYERS = {
    "default": {"BACKEND": "layer.inmemory.InMemoryChannelLayer", "CONFIG": {"capacity": 50}},
}
LOGGING = {
    "version": 1,  # disable_existing_loggers defaults to True
    "handlers": {"quiet": {"class": "logging.NullHandler"}},
    "root": {"handlers": ["quiet"], "level": "ERROR"},
}
