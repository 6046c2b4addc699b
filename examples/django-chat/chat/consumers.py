"""The Channels tutorial's chat consumer: one group per room."""

import json

from channels.generic.websocket import AsyncWebsocketConsumer

TASKS = "chat-tasks"  # the background channel (chat/tasks.py)


def room_group(room_name):
    return f"chat_{room_name}"


class ChatConsumer(AsyncWebsocketConsumer):
    async def connect(self):
        self.room_name = self.scope["url_route"]["kwargs"]["room_name"]
        self.room_group_name = room_group(self.room_name)
        await self.channel_layer.group_add(self.room_group_name, self.channel_name)
        await self.accept()

    async def disconnect(self, close_code):
        await self.channel_layer.group_discard(self.room_group_name, self.channel_name)

    async def receive(self, text_data=None, bytes_data=None):
        message = json.loads(text_data)["message"]
        if message.startswith("/shout "):
            # Work that need not hold up the socket goes to a background worker.
            await self.channel_layer.send(
                TASKS, {"type": "shout", "room": self.room_name, "text": message[7:]}
            )
            return
        await self.channel_layer.group_send(
            self.room_group_name, {"type": "chat.message", "message": message}
        )

    async def chat_message(self, event):
        await self.send(text_data=json.dumps({"message": event["message"]}))
