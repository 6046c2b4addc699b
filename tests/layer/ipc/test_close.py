"""close() of an IPC layer while other threads' loops (``async_to_sync``) send through it: every
call works or raises ``LayerClosed``, and no send that returned is lost."""

from __future__ import annotations

import asyncio
import contextlib
import threading

import pytest

from layer.exceptions import ChannelFull, LayerClosed
from layer.ipc import IPCChannelLayer
from layer.ipc.segment import unlink


def _close_while_threads_send(prefix: str, pause: float) -> list[str]:
    """Three threads send (each in its own loop, as async_to_sync does) while this one closes
    the layer; the errors other than LayerClosed."""
    layer = IPCChannelLayer(prefix=prefix, size="16MB")
    stop = threading.Event()
    started = threading.Barrier(4)
    other: list[str] = []

    async def stream(i: int) -> None:
        n = 0
        started.wait()
        while not stop.is_set():
            await layer.send(f"c{i}", {"type": "x", "n": n})
            n += 1
            if n % 50 == 0:
                for _ in range(50):
                    await asyncio.wait_for(layer.receive(f"c{i}"), 5)

    def sender(i: int) -> None:
        try:
            asyncio.run(stream(i))
        except LayerClosed:
            pass
        except Exception as exc:
            other.append(repr(exc))

    threads = [threading.Thread(target=sender, args=(i,)) for i in range(3)]
    for thread in threads:
        thread.start()
    started.wait()
    stop.wait(pause)
    try:
        asyncio.run(layer.close())
    except Exception as exc:
        other.append(f"close: {exc!r}")
    stop.set()
    for thread in threads:
        thread.join(10)
    if any(thread.is_alive() for thread in threads):
        other.append("a sender thread hangs")
    unlink(prefix)
    return other


@pytest.mark.timeout(120)
def test_close_racing_sends_from_other_threads_says_closed(ipc_prefix: str) -> None:
    """Every call either works or raises LayerClosed. Was: EBADF from flock on the closed
    descriptor, "mmap closed or invalid" inside a critical section, an IndexError in close()
    when another thread had flushed the outbox first (and close() never finished)."""
    other = [
        e
        for trial in range(30)
        for e in _close_while_threads_send(ipc_prefix, 0.005 + (trial % 7) * 0.003)
    ]
    assert other == []


def _sent_and_kept(prefix: str, pause: float) -> tuple[int, int]:
    """Sends that returned from a thread streaming while this one closes, and how many of
    them the segment holds afterwards."""
    layer = IPCChannelLayer(prefix=prefix, size="16MB", capacity=100_000)
    sent, started = [0], threading.Event()

    async def stream() -> None:
        started.set()
        with contextlib.suppress(LayerClosed, ChannelFull):  # full: a long trial, it stops
            while True:
                await layer.send("c", {"type": "x"})
                sent[0] += 1

    thread = threading.Thread(target=asyncio.run, args=(stream(),))
    thread.start()
    started.wait()
    stop = threading.Event()
    stop.wait(pause)
    asyncio.run(layer.close())
    thread.join(10)
    check = IPCChannelLayer(prefix=prefix, size="16MB", capacity=100_000)

    async def count() -> int:
        n = 0
        with contextlib.suppress(TimeoutError):
            while True:
                await asyncio.wait_for(check.receive("c"), 0.2)
                n += 1
        return n

    kept = asyncio.run(count())
    asyncio.run(check.close())
    unlink(prefix)
    return sent[0], kept


@pytest.mark.timeout(120)
def test_sends_racing_close_from_another_thread_are_kept_or_refused(ipc_prefix: str) -> None:
    """Every send that returned is in the segment, and none that raised is. Was: a send
    admitted to the outbox by another thread just as close() flushed it for the last time
    was never written (a batch of up to 64, in about half of 20 trials), and a send that
    raised LayerClosed could be in the segment."""
    results = [_sent_and_kept(ipc_prefix, 0.002 + (t % 5) * 0.002) for t in range(20)]
    assert [sent for sent, _ in results] == [kept for _, kept in results]
