"""A background task: a consumer on a named channel, not on a client connection.

Run it with `layerkit worker --channels chat-tasks` (or `manage.py runworker chat-tasks`);
anything may send to the channel: here the chat consumer hands it "/shout ..." messages.
"""

from channels.consumer import AsyncConsumer

from chat.consumers import room_group


class ChatTasksConsumer(AsyncConsumer):
    async def shout(self, event):
        await self.channel_layer.group_send(
            room_group(event["room"]),
            {"type": "chat.message", "message": f"bot: {event['text'].upper()}!"},
        )
