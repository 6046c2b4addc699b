"""Names: what the spec accepts and refuses for channels and groups, and why."""

from __future__ import annotations

import re

import pytest

from layer.base import BaseChannelLayer
from layer.exceptions import InvalidName
from tests.layer.receiving import receive_soon

# -- names ------------------------------------------------------------------------------------

VALID_CHANNELS = ["a", "a.b-c_d", "x" * 99, "http.response!abc", "a!", "q?abc", "a.b?c!d", "a!b?"]
INVALID_CHANNELS = [
    ("x" * 100, "fewer than 100"),
    ("", "empty"),
    ("héllo", "contains"),
    ("sp ace", "contains"),
    ("a!b!c", "more than one '!'"),
    ("a?b?c", "more than one '?'"),
    ("!abc", "start with"),
    (123, "must be a str"),
    (None, "must be a str"),
]


@pytest.mark.parametrize("name", VALID_CHANNELS)
async def test_valid_channel_names(channel_layer: BaseChannelLayer, name: str) -> None:
    if channel_layer.cross_process:  # a process-specific one of this client, to receive on
        name = name.replace("!", f"{channel_layer.client_id}!")
    assert channel_layer.valid_channel_name(name)
    await channel_layer.send(name, {"type": "ok"})
    assert (await receive_soon(channel_layer, name))["type"] == "ok"


@pytest.mark.parametrize(("name", "rule"), INVALID_CHANNELS)
async def test_invalid_channel_names(channel_layer: BaseChannelLayer, name, rule) -> None:
    for call in (
        lambda: channel_layer.send(name, {"type": "x"}),
        lambda: channel_layer.receive(name),
        lambda: channel_layer.group_add("g", name),
    ):
        with pytest.raises(InvalidName, match=re.escape(rule)) as info:
            await call()
        assert isinstance(info.value, TypeError)
    with pytest.raises(TypeError):
        channel_layer.valid_channel_name(name)


@pytest.mark.parametrize("name", ["g!x", "g?x", "x" * 100, "", "gr oup", 7])
async def test_invalid_group_names(channel_layer: BaseChannelLayer, name) -> None:
    with pytest.raises(InvalidName):
        await channel_layer.group_add(name, "c")
    with pytest.raises(InvalidName):
        await channel_layer.group_send(name, {"type": "x"})
    with pytest.raises(InvalidName):
        await channel_layer.group_discard(name, "c")


async def test_group_name_length_boundary(channel_layer: BaseChannelLayer) -> None:
    await channel_layer.group_add("g" * 99, "c")
    await channel_layer.group_send("g" * 99, {"type": "x"})
    assert (await receive_soon(channel_layer, "c"))["type"] == "x"


def test_name_helpers(channel_layer: BaseChannelLayer) -> None:
    assert channel_layer.non_local_name("a.b!xyz") == "a.b!"
    assert channel_layer.non_local_name("a.b") == "a.b"
    assert channel_layer.valid_channel_names(["a", "b!c"])
    with pytest.raises(TypeError):
        channel_layer.valid_channel_names("abc")
