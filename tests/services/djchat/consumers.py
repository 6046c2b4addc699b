"""A textbook Channels group chat consumer: nothing in it knows about the kit."""

from __future__ import annotations

import asyncio
import os
from typing import Any

from channels.consumer import AsyncConsumer
from channels.generic.websocket import AsyncJsonWebsocketConsumer


class ChatConsumer(AsyncJsonWebsocketConsumer):  # type: ignore[misc]
    async def connect(self) -> None:
        self.group = f"djchat.{self.scope['url_route']['kwargs']['room']}"
        await self.channel_layer.group_add(self.group, self.channel_name)
        await self.accept()
        await self.send_json({"pid": os.getpid()})

    async def disconnect(self, code: int) -> None:
        await self.channel_layer.group_discard(self.group, self.channel_name)

    async def receive_json(self, content: dict[str, Any], **kwargs: Any) -> None:
        await self.channel_layer.group_send(
            self.group, {"type": "chat.message", "text": content["text"]}
        )

    async def chat_message(self, event: dict[str, Any]) -> None:
        await self.send_json({"text": event["text"]})


class Shouter(AsyncConsumer):  # type: ignore[misc]
    """A ``ChannelNameRouter`` background task, as ``manage.py runworker bg-tasks`` would run it:
    shouts a room's message, and takes a second over "slow..." (a draining worker finishes it)."""

    async def shout(self, event: dict[str, Any]) -> None:
        if event["text"].startswith("slow"):
            await asyncio.sleep(1)
        text = f"{event['text'].upper()} (from {os.getpid()})"
        await self.channel_layer.group_send(
            f"djchat.{event['room']}", {"type": "chat.message", "text": text}
        )
