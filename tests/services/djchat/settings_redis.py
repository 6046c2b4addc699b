"""Settings as a user writes them: the layer lives here and nowhere else (no $LAYER_CONFIG)."""

from __future__ import annotations

import os

from tests.services.djchat.base import *  # noqa: F403

CHANNEL_LAYERS = {
    "default": {
        "BACKEND": "layer.redis.RedisChannelLayer",
        "CONFIG": {"hosts": [os.environ["REDIS_URL"]], "prefix": "djchat"},
    },
}
