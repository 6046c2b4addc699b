"""Plain Django views: one reports the pid, one posts into a room from a sync view."""

from __future__ import annotations

import json
import os

from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from django.http import HttpRequest, JsonResponse
from django.urls import path
from django.views.decorators.csrf import csrf_exempt


def hello(request: HttpRequest) -> JsonResponse:
    return JsonResponse({"hello": "django", "pid": os.getpid()})


@csrf_exempt
def post(request: HttpRequest, room: str) -> JsonResponse:
    text = json.loads(request.body)["text"]
    async_to_sync(get_channel_layer().group_send)(
        f"djchat.{room}", {"type": "chat.message", "text": text}
    )
    return JsonResponse({"ok": True}, status=202)


@csrf_exempt
def shout(request: HttpRequest, room: str) -> JsonResponse:
    """Hands the work to the background channel (``layerkit worker --channels bg-tasks``)."""
    text = json.loads(request.body)["text"]
    async_to_sync(get_channel_layer().send)(
        "bg-tasks", {"type": "shout", "room": room, "text": text}
    )
    return JsonResponse({"ok": True}, status=202)


urlpatterns = [
    path("hello/", hello),
    path("rooms/<str:room>/", post),
    path("rooms/<str:room>/shout/", shout),
]
