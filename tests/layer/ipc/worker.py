"""Processes for the IPC tests: ``python -m tests.layer.ipc.worker ROLE PREFIX [ARGS...]``.

Each role attaches its own ``IPCChannelLayer`` (a real, separate process) and reports on stdout:
``ready`` lines for synchronisation and one JSON line with what it saw. The ``v-*`` roles of
the volume runs, which drive a Redis layer too, are in ``volume_roles.py``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import sys
import time
import zlib

from layer.exceptions import ChannelFull
from layer.ipc import IPCChannelLayer
from layer.ipc.layout import ENTRY_SIZE, NIL
from layer.ipc.receivers import SPIN
from layer.ipc.table import make_key

SIZE = "16MB"


def say(line: object) -> None:
    print(line if isinstance(line, str) else json.dumps(line), flush=True)


async def send_retrying(layer: IPCChannelLayer, channel: str, message: dict) -> None:
    while True:
        try:
            return await layer.send(channel, message)
        except ChannelFull:
            await asyncio.sleep(0.002)


async def produce(layer: IPCChannelLayer, me: int, count: int, group_every: int) -> None:
    """``count`` messages to the shared channel; every ``group_every``-th also to the group."""
    for i in range(count):
        await send_retrying(layer, "mp.work", {"type": "w", "p": me, "i": i})
        if i % group_every == 0:
            await layer.group_send("mp.all", {"type": "g", "p": me, "i": i})
    say({"sent": count})


async def consume(layer: IPCChannelLayer, me: int, group_total: int) -> None:
    """Receive from the shared channel until ``stop``, and ``group_total`` group messages."""
    own = f"mp.consumer.{me}"
    await layer.group_add("mp.all", own)
    say("ready")
    work: list[tuple[int, int]] = []
    group: list[tuple[int, int]] = []

    async def shared() -> None:
        while (message := await layer.receive("mp.work"))["type"] != "stop":
            work.append((message["p"], message["i"]))

    async def grouped() -> None:
        while len(group) < group_total:
            message = await layer.receive(own)
            group.append((message["p"], message["i"]))

    await asyncio.gather(shared(), grouped())
    say({"work": work, "group": group})


async def checked_stream(layer: IPCChannelLayer, role: str, count: int) -> None:
    """Survivors of the crash test: numbered messages whose data carries its own CRC."""
    if role == "send":
        say("ready")
        for i in range(count):
            data = os.urandom(64 + (i * 37) % 3000)
            await send_retrying(layer, "k.main", {"type": "m", "i": i, "data": data,
                                                   "crc": zlib.crc32(data)})  # fmt: skip
        say({"sent": count})
        return
    say("ready")
    stall = 0.0
    last = time.monotonic()
    for i in range(count):
        message = await asyncio.wait_for(layer.receive("k.main"), 30)
        now = time.monotonic()
        stall, last = max(stall, now - last), now
        assert message["i"] == i, f"expected message {i}, got {message['i']}"
        assert zlib.crc32(message["data"]) == message["crc"], f"message {i} is torn"
    recoveries = layer.debug_state().segment_recoveries
    say({"received": count, "max_stall": stall, "recoveries": recoveries})


async def impatient(layer: IPCChannelLayer, count: int) -> None:
    """Receive ``count`` messages through receives that time out at random moments."""
    rng = random.Random(5)
    got: list[int] = []
    timeouts = 0
    for _ in range(20):  # nothing is sent yet: these leave withdrawn waiters behind
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(layer.receive("c.flaky"), 0.001)
    say("ready")
    while len(got) < count:
        try:
            message = await asyncio.wait_for(layer.receive("c.flaky"), rng.uniform(0, 0.002))
        except TimeoutError:
            timeouts += 1
        else:
            got.append(message["i"])
    say({"got": got, "timeouts": timeouts})


async def victim(layer: IPCChannelLayer) -> None:
    """A tight loop of every kind of mutation (expiry sweeps of 100 messages too), to be
    SIGKILLed at a random moment."""
    mine = f"k.victim.{os.getpid()}"
    await layer.group_add("k.group", mine)
    # Its messages expire almost at once: every receive on it sweeps a long expired run.
    brief = IPCChannelLayer(prefix=layer.prefix, size=SIZE, expiry=0.002, capacity=10_000)
    say("ready")
    n = 0
    while True:
        n += 1
        for i in range(100):  # one- and multi-slot
            await brief.send(f"{mine}.exp", {"type": "e", "pad": bytes(i % 4 * 300)})
        await asyncio.sleep(0.003)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(brief.receive(f"{mine}.exp"), 0.001)
        # big messages: most of the time under the lock is spent half way through a write
        await layer.send(mine, {"type": "v", "data": bytes(20_000 + n % 50_000)})
        await layer.group_send("k.group", {"type": "g", "n": n})
        await layer.receive(mine)
        await layer.receive(mine)
        waiting = asyncio.ensure_future(layer.receive(f"{mine}.idle"))
        await asyncio.sleep(0)
        waiting.cancel()


async def sized(layer: IPCChannelLayer, channel: str, count: int, seed: int) -> None:
    """Send ``count`` messages of random sizes from 1 byte to 3 MB (one- and multi-extent),
    each filled with a byte of its index, retrying while the segment is full."""
    rng = random.Random(seed)
    for i in range(count):
        size = int(10 ** rng.uniform(0, 6.5))
        await send_retrying(layer, channel, {"type": "z", "i": i, "body": bytes([i % 251]) * size})
    say("sent")


def hold(layer: IPCChannelLayer, what: str) -> None:
    """Die while holding the lock half way through a mutation (the parent SIGKILLs us)."""
    key = make_key("h.chan")
    parts = layer.parts
    store, me = parts.storage, (parts.receivers.waker, parts.receivers.gen)
    queues, takes, waits = store.queues, store.takes, store.waits
    with parts.lock as j:
        if what == "push":
            queues.push(j, key, b"\x81\xa4type\xa4torn", time.monotonic() + 60, 100)
        elif what == "take":
            assert takes.take(j, key, time.monotonic()) is not None
        elif what == "take_run":  # a run taken ahead in one mutation, never committed
            for _ in range(3):
                queues.push(j, key, b"\x81\xa4type\xa4more", time.monotonic() + 60, 100)
                j.commit()
            head = takes.mutable + store.table.channel_index(*key) * ENTRY_SIZE
            assert takes.unlink_run(head, j, time.monotonic(), 10, []) == 4
        elif what == "run":  # a coalesced run of sends, all written, never committed
            runs = [b"\x81\xa4type\xa4torn"] * 5
            queues.push_run(j, key, runs, time.monotonic() + 60, [])
        elif what in ("fire", "register"):  # a waiter of ours fired, or re-registered
            wait, torn = make_key("h.wait"), b"\x81\xa4type\xa4torn"
            node = waits.register(j, wait, *me, NIL)
            j.commit()
            queues.push(j, wait, torn, time.monotonic() + 60, 100)  # fires our node
            if what == "register":  # take the message, then reuse the fired node
                j.commit()
                assert takes.take(j, wait, time.monotonic()) is not None
                j.commit()
                waits.register(j, wait, *me, node)
        elif what == "register_alloc":  # a waiter's node taken off the free node list
            wait = make_key("h.wait")
            node = waits.register(j, wait, *me, NIL)
            j.commit()
            waits.unregister(j, node)  # withdrawn: the node is on the free list
            j.commit()
            waits.register(j, wait, *me, NIL)  # and off it again
        elif what == "flush":
            parts.lock.begin_flush()
            buckets = store.geometry.buckets
            store.mm[buckets : buckets + 4] = b"\xff" * 4
        say("holding")
        time.sleep(600)


async def burst(layer: IPCChannelLayer, channel: str, count: int) -> None:
    """Send ``count`` numbered messages in one loop turn, then block that loop (no turn ends,
    so sends still held are never flushed) until the parent SIGKILLs us."""
    for i in range(count):
        await layer.send(channel, {"type": "b", "i": i})
    say("sent")
    time.sleep(600)  # noqa: ASYNC251 -- blocking the loop on purpose: no turn may end


async def stream(layer: IPCChannelLayer, me: int, channel: str, count: int) -> None:
    """``count`` numbered messages in bursts of a few loop turns each (held, then flushed)."""
    for i in range(count):
        await send_retrying(layer, channel, {"type": "s", "p": me, "i": i})
        if i % 97 == 0:
            await asyncio.sleep(0)
    say({"sent": count})


async def drain(layer: IPCChannelLayer, channel: str) -> None:
    """Receive from ``channel`` until ``stop``; report ``(producer, i)`` pairs in order."""
    say("ready")
    got: list[tuple[int, int]] = []
    while (message := await layer.receive(channel))["type"] != "stop":
        got.append((message["p"], message["i"]))
    say({"got": got})


async def take_two(layer: IPCChannelLayer, channel: str, then: str) -> bool:
    """Receive two messages from a shared channel in a row (the second takes ahead), report
    them and how many were held after each; then receive no more on it and: ``close`` at once;
    ``wait`` with the loop running until told to stop (the held messages go back on their
    own); ``block`` the event loop in a synchronous read until told to stop (as a process
    busy in blocking code, or parked between ``async_to_sync`` calls); or ``exit`` the
    process without ``close()``. Returns whether ``main`` should close the layer."""
    say("ready")
    sys.stdin.readline()
    got = [(await layer.receive(channel))["i"]]
    held = [sum(layer.debug_state().held.values())]
    got.append((await layer.receive(channel))["i"])
    held.append(sum(layer.debug_state().held.values()))
    say({"got": got, "held": held})
    if then == "exit":
        return False
    if then == "wait":
        await asyncio.to_thread(sys.stdin.readline)
    elif then == "block":
        sys.stdin.readline()  # no loop turn until the parent has received the held messages
    state = layer.debug_state()
    say({"held_at_close": sum(state.held.values()), "returning": state.returning})
    return True


async def commands(layer: IPCChannelLayer, me: int) -> None:
    """Run JSON commands from stdin, one reply line each, after the loop turn that flushes the
    sends held meanwhile (so the parent sees the segment as they left it): ``send`` numbered
    messages to channels (``ok`` per send: False for ChannelFull), ``group`` a numbered group
    send (``dropped`` members), ``stream`` ``count`` sends spread over channels (retrying while
    full) with a group send every ``every`` (``dropped``: those a full inbox dropped)."""
    while line := await asyncio.to_thread(sys.stdin.readline):
        command = json.loads(line)
        body = b"x" * command.get("size", 0)
        if "send" in command:
            ok = []
            for channel, i in command["send"]:
                try:
                    await layer.send(channel, {"type": "m", "p": me, "i": i, "b": body})
                    ok.append(True)
                except ChannelFull:
                    ok.append(False)
            await asyncio.sleep(0)
            say({"ok": ok})
        elif "group" in command:
            before = layer.counters.dropped_full
            await layer.group_send(command["group"], {"type": "g", "p": me, "i": command["i"]})
            say({"dropped": layer.counters.dropped_full - before})
        elif "stream" in command:
            rng = random.Random(command["seed"])
            channels, dropped = command["stream"], []
            for i in range(command["count"]):
                await send_retrying(layer, rng.choice(channels), {"type": "m", "p": me, "i": i})
                if i % command["every"] == 0:
                    before = layer.counters.dropped_full
                    await layer.group_send(command["in"], {"type": "g", "p": me, "i": i})
                    if layer.counters.dropped_full != before:  # the inbox was full
                        dropped.append(i)
            await asyncio.sleep(0)
            say({"sent": command["count"], "dropped": dropped})


async def group_loop(layer: IPCChannelLayer, group: str) -> None:
    """Numbered group sends until SIGKILLed (the crash tests kill it mid-send)."""
    say("ready")
    i = 0
    while True:
        await layer.group_send(group, {"type": "g", "i": i})
        i += 1


async def main(role: str, prefix: str, args: list[str]) -> None:
    if role == "start":  # attach only after the parent says go: all at the same instant
        sys.stdin.readline()
    spin = float(os.environ.get("IPC_TEST_SPIN", SPIN))  # tests run both wake paths
    capacity = int(args[1]) if role == "commands" else 10_000
    layer = IPCChannelLayer(prefix=prefix, size=SIZE, capacity=capacity, spin=spin)
    close = True
    try:
        if role == "produce":
            await produce(layer, int(args[0]), int(args[1]), int(args[2]))
        elif role == "consume":
            await consume(layer, int(args[0]), int(args[1]))
        elif role == "stream":
            await checked_stream(layer, args[0], int(args[1]))
        elif role == "impatient":
            await impatient(layer, int(args[0]))
        elif role == "burst":
            await burst(layer, args[0], int(args[1]))
        elif role == "stream-to":
            await stream(layer, int(args[0]), args[1], int(args[2]))
        elif role == "take-two":
            close = await take_two(layer, args[0], args[1])
        elif role == "drain":
            await drain(layer, args[0])
        elif role == "victim":
            await victim(layer)
        elif role == "sized":
            await sized(layer, args[0], int(args[1]), int(args[2]))
        elif role == "hold":
            hold(layer, args[0])
        elif role == "commands":
            await commands(layer, int(args[0]))
        elif role == "group-loop":
            await group_loop(layer, args[0])
        elif role == "start":
            for i in range(50):
                await layer.send("s.shared", {"type": "s", "pid": os.getpid(), "i": i})
            state = layer.debug_state()
            say({"initialised": state.created, "epoch": state.epoch})
        elif role == "wait":
            say("ready")
            say(await layer.receive(args[0]))
    finally:
        if close:
            await layer.close()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2], sys.argv[3:]))
