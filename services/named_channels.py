"""Background channels: what Channels' ``manage.py runworker CHANNEL...`` does, in the worker.

A Channels app routes ``{"type": "channel"}`` scopes with ``ChannelNameRouter`` to consumers that
handle messages sent to a named channel (``channel_layer.send("thumbnails", {...})``). For each
channel of ``--channels``, the worker receives its messages and feeds them to one app instance
with the scope ``{"type": "channel", "channel": name}``, as runworker does; several workers
listening on a channel share its messages (each goes to one of them).

Unlike runworker, an instance that raises (a handler's error, a message type it has no handler
for) or returns is started again (at once if messages wait for it, else by
the next message), and SIGTERM stops the receiving and lets the queued messages finish, for up
to the drain timeout.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
from collections.abc import Sequence
from typing import Any

from layer.base import BaseChannelLayer
from layer.logs import Throttled
from layer.names import process_specific, valid_channel_name
from services.instance import ASGIApp

log = logging.getLogger("layerkit.worker")


def channel_names(text: str) -> tuple[str, ...]:
    """``--channels``: names separated by commas or spaces; process-specific ones (with ``!``)
    belong to one process and cannot be shared by workers."""
    names = tuple(name for name in text.replace(",", " ").split() if name)
    for name in names:
        if not valid_channel_name(name) or process_specific(name) or "?" in name:
            raise argparse.ArgumentTypeError(
                f"{name!r} is not a channel name a worker can listen on (ASCII letters, digits, "
                "'-', '_' and '.', fewer than 100 characters)"
            )
    return names


class _Feed:
    """One channel's app instance and the messages received for it that it has not taken."""

    def __init__(self, name: str, changed: asyncio.Event) -> None:
        self.name = name
        self.changed = changed  # set when this feed may have become done()
        self.queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.waiting = asyncio.Event()  # set while the instance waits with nothing queued
        self.instance: asyncio.Task[None] | None = None

    async def receive(self) -> dict[str, Any]:
        if self.queue.empty():
            self.waiting.set()
            self.changed.set()
        message = await self.queue.get()
        self.waiting.clear()
        return message

    def done(self) -> bool:
        """Nothing left to do: all taken, and the instance waits for more (or is gone)."""
        gone = self.instance is None or self.instance.done()
        return self.queue.empty() and (gone or self.waiting.is_set())


class NamedChannels:
    """Receives on ``channels`` and runs ``app`` for them; see the module docstring."""

    def __init__(
        self, layer: BaseChannelLayer, app: ASGIApp, channels: Sequence[str], retry: float
    ) -> None:
        self.layer = layer
        self.app = app
        self.retry = retry  # seconds between tries of a receive that failed
        self._changed = asyncio.Event()
        self._feeds = [_Feed(name, self._changed) for name in channels]
        self._listeners: list[asyncio.Task[None]] = []
        self._log = Throttled(log)

    def start(self) -> None:
        self._listeners = [asyncio.create_task(self._listen(feed)) for feed in self._feeds]
        log.info("serving background channels %s", ", ".join(f.name for f in self._feeds))

    async def stop(self, grace: float) -> None:
        """Stop receiving; give queued messages up to ``grace`` s, then cancel the instances."""
        for task in self._listeners:
            task.cancel()
        await asyncio.gather(*self._listeners, return_exceptions=True)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._quiet(), grace)
        instances = [feed.instance for feed in self._feeds if feed.instance is not None]
        for task in instances:
            task.cancel()
        await asyncio.gather(*instances, return_exceptions=True)

    async def _quiet(self) -> None:
        while not all(feed.done() for feed in self._feeds):
            self._changed.clear()
            await self._changed.wait()

    async def _listen(self, feed: _Feed) -> None:
        while True:
            try:
                message = await self.layer.receive(feed.name)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self._log(feed.name, logging.ERROR, "receiving on %s failed: %r", feed.name, exc)
                await asyncio.sleep(self.retry)
                continue
            feed.queue.put_nowait(message)
            if feed.instance is None or feed.instance.done():
                feed.instance = asyncio.create_task(self._run(feed))
                feed.instance.add_done_callback(lambda _: self._changed.set())

    async def _run(self, feed: _Feed) -> None:
        scope = {"type": "channel", "channel": feed.name}
        while True:
            try:
                await self.app(scope, feed.receive, _no_client(feed.name))
                log.warning("the app for background channel %s returned", feed.name)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("the app for background channel %s raised", feed.name)
            if feed.queue.empty():
                return  # the next message starts it again
            await asyncio.sleep(self.retry)  # messages wait: start again, but not in a hot loop


def _no_client(name: str) -> Any:
    async def send(message: dict[str, Any]) -> None:
        raise RuntimeError(
            f"background channel {name} has no client to send {message.get('type')!r} to; "
            "send over the channel layer instead"
        )

    return send
