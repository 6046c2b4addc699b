"""The example chat (examples/django-chat) in the kit's containers, every topology: two real
Chromium browsers in two rooms, through two protocol servers where the topology has two; the
background task runs in the workers; the admin's static files are served.

Runs against the stack that scripts/integration.sh brings up with examples/django-chat/compose.yml
(``pytest -m "integration and example"``)."""

from __future__ import annotations

import os

import pytest

from tests.integration.stack import Stack
from tests.support.chat_pages import admin_styled, chromium, two_browsers_two_rooms

pytestmark = [
    pytest.mark.integration,
    pytest.mark.example,
    pytest.mark.browser,
    pytest.mark.timeout(300),
]

IMAGE = os.environ.get("KIT_EXAMPLE_IMAGE", "django-chat")
# topology -> (where the first browser connects, where the second does, the workers)
TOPOLOGIES = {
    "combined": ("combined", "combined", ["combined"]),
    "redis-sharded": ("pod-a-protocol", "pod-b-protocol", ["pod-a-worker", "pod-b-worker"]),
    "ipc": ("ipc-protocol", "ipc-protocol", ["ipc-worker"]),
    "local-redis": ("local-a-protocol", "local-b-protocol", ["local-a-worker", "local-b-worker"]),
}


@pytest.fixture(scope="module")
def chat(stack: Stack) -> Stack:
    for first, second, workers in TOPOLOGIES.values():
        for service in {first, second, *workers}:
            image = stack.inspect(service)["Config"]["Image"]
            if image.split(":")[0] != IMAGE:
                pytest.fail(
                    f"{service} runs {image}, not the example: start the stack with "
                    "examples/django-chat/compose.yml (make integration-test does)"
                )
    return stack


@pytest.mark.parametrize("topology", list(TOPOLOGIES))
def test_two_browsers_in_two_rooms(chat: Stack, topology: str) -> None:
    first_front, second_front, workers = TOPOLOGIES[topology]
    for worker in workers:
        assert "serving background channels chat-tasks" in chat.logs(worker), worker
        assert "from settings.CHANNEL_LAYERS (mysite.settings)" in chat.logs(worker), worker
    url_1, url_2 = chat.url(first_front), chat.url(second_front)
    with chromium() as first, chromium() as second:
        two_browsers_two_rooms(first, second, url_1, url_2)
        admin_styled(first, url_1)
