"""The project's ``asgi.py``, exactly as Channels documents it; run with ``--app ...:application``."""

from __future__ import annotations

import os

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.services.djchat.settings_inmemory")

from channels.routing import ChannelNameRouter, ProtocolTypeRouter, URLRouter
from django.core.asgi import get_asgi_application
from django.urls import path

django_application = get_asgi_application()

from tests.services.djchat.consumers import ChatConsumer, Shouter  # noqa: E402

application = ProtocolTypeRouter(
    {
        "http": django_application,
        "websocket": URLRouter([path("chat/<str:room>/", ChatConsumer.as_asgi())]),
        "channel": ChannelNameRouter({"bg-tasks": Shouter.as_asgi()}),
    }
)
