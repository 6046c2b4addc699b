"""Settings whose CHANNEL_LAYERS come from the kit's layer config file ($LAYER_CONFIG), so that
one test runs the chat on every backend; the services find the two equal."""

from __future__ import annotations

from layer.config import load
from tests.services.djchat.base import *  # noqa: F403

CHANNEL_LAYERS = {
    alias: {"BACKEND": spec.backend, "CONFIG": spec.config} for alias, spec in load().items()
}
