"""ASGI entry point: `layerkit worker --app mysite.asgi:application` (and `combined`).

HTTP goes to Django, WebSockets to the chat's consumer, and the background channel
``chat-tasks`` to its consumer (`layerkit worker --channels chat-tasks`, as `manage.py
runworker chat-tasks` would).
"""

import os

from channels.auth import AuthMiddlewareStack
from channels.routing import ChannelNameRouter, ProtocolTypeRouter, URLRouter
from channels.security.websocket import AllowedHostsOriginValidator
from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "mysite.settings")
# Initialise Django before importing anything that may import models.
django_asgi_app = get_asgi_application()

from chat.routing import websocket_urlpatterns  # noqa: E402
from chat.tasks import ChatTasksConsumer  # noqa: E402

application = ProtocolTypeRouter(
    {
        "http": django_asgi_app,
        "websocket": AllowedHostsOriginValidator(
            AuthMiddlewareStack(URLRouter(websocket_urlpatterns))
        ),
        "channel": ChannelNameRouter({"chat-tasks": ChatTasksConsumer.as_asgi()}),
    }
)
