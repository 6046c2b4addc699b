"""A real Django Channels group chat running on our layers (the drop-in ``BACKEND`` promise)."""

from __future__ import annotations

from collections.abc import Iterator

import django
import pytest
from django.conf import settings

if not settings.configured:
    settings.configure(
        SECRET_KEY="test",
        INSTALLED_APPS=["channels"],
        CHANNEL_LAYERS={"default": {"BACKEND": "layer.inmemory.InMemoryChannelLayer"}},
    )
    django.setup()

from channels.generic.websocket import AsyncJsonWebsocketConsumer
from channels.layers import channel_layers, get_channel_layer
from channels.testing import WebsocketCommunicator
from django.test import override_settings

from layer.base import BaseChannelLayer
from layer.inmemory import InMemoryChannelLayer
from tests.layer.conftest import LayerFactory


class ChatConsumer(AsyncJsonWebsocketConsumer):  # type: ignore[misc]
    room = "lobby"

    async def connect(self) -> None:
        await self.channel_layer.group_add(self.room, self.channel_name)
        await self.accept()

    async def disconnect(self, code: int) -> None:
        await self.channel_layer.group_discard(self.room, self.channel_name)

    async def receive_json(self, content: dict, **kwargs: object) -> None:
        await self.channel_layer.group_send(
            self.room, {"type": "chat.message", "text": content["text"]}
        )

    async def chat_message(self, event: dict) -> None:
        await self.send_json({"text": event["text"]})


@pytest.fixture
def installed_layer(layer_factory: LayerFactory) -> Iterator[BaseChannelLayer]:
    """Put one of our layers behind Channels' ``get_channel_layer()``."""
    layer = layer_factory()
    previous = channel_layers.set("default", layer)
    yield layer
    channel_layers.set("default", previous)


async def chat_round(channel_layer: BaseChannelLayer) -> None:
    alice = WebsocketCommunicator(ChatConsumer.as_asgi(), "/ws/chat/")
    bob = WebsocketCommunicator(ChatConsumer.as_asgi(), "/ws/chat/")
    assert (await alice.connect())[0] and (await bob.connect())[0]
    await alice.send_json_to({"text": "hello bob"})
    assert await bob.receive_json_from(timeout=5) == {"text": "hello bob"}
    assert await alice.receive_json_from(timeout=5) == {"text": "hello bob"}
    await bob.disconnect()
    await alice.send_json_to({"text": "anyone?"})
    assert await alice.receive_json_from(timeout=5) == {"text": "anyone?"}
    await alice.disconnect()


async def test_group_chat_on_every_backend(installed_layer: BaseChannelLayer) -> None:
    assert get_channel_layer() is installed_layer
    await chat_round(installed_layer)


async def test_backend_dotted_path_through_channels_settings() -> None:
    config = {
        "default": {
            "BACKEND": "layer.inmemory.InMemoryChannelLayer",
            "CONFIG": {"capacity": 50, "channel_capacity": {"specific.*": 10}},
        }
    }
    with override_settings(CHANNEL_LAYERS=config):
        layer = get_channel_layer()
        assert isinstance(layer, InMemoryChannelLayer)
        assert layer.capacity == 50 and layer.get_capacity("specific.x!y") == 10
        await chat_round(layer)
