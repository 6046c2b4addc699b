"""The same roles as ``bench/ipc_driver.py`` for the original ``asgi_ipc`` 1.4.2 (ASGI 1, sync).

Run by the peer virtualenv's Python, so it imports nothing from this repository. ``asgi_ipc``
has no blocking receive: a receiver polls in a tight loop, the best it can do.
"""

import json
import sys
import time

from asgi_ipc import IPCChannelLayer

MESSAGE = {"type": "chat.message", "text": "hello world", "n": 1}


def handshake():
    print("ready", flush=True)
    sys.stdin.readline()


def receive(layer, channel):
    while True:
        _, message = layer.receive([channel])
        if message is not None:
            return message


def send(layer, channel, message):
    while True:
        try:
            return layer.send(channel, message)
        except layer.ChannelFull:
            time.sleep(0.001)


def main(role, prefix, count, depth):
    layer = IPCChannelLayer(prefix=prefix, capacity=1000000)
    if role == "echo":
        handshake()
        for _ in range(count):
            send(layer, "bench.pong", receive(layer, "bench.ping"))
    elif role == "ping":
        handshake()
        started = time.perf_counter()
        for _ in range(count):
            send(layer, "bench.ping", MESSAGE)
            receive(layer, "bench.pong")
        print(json.dumps({"rate": count / (time.perf_counter() - started)}), flush=True)
    elif role == "produce":
        for _ in range(depth):
            send(layer, "bench.stream", MESSAGE)
        handshake()
        for _ in range(count):
            send(layer, "bench.stream", MESSAGE)
    elif role == "solo":
        handshake()
        started = time.perf_counter()
        for _ in range(count):
            send(layer, "bench.solo", MESSAGE)
            receive(layer, "bench.solo")
        print(json.dumps({"rate": count / (time.perf_counter() - started)}), flush=True)
    elif role == "consume":
        handshake()
        started = time.perf_counter()
        for _ in range(count):
            receive(layer, "bench.stream")
        print(json.dumps({"rate": count / (time.perf_counter() - started)}), flush=True)


if __name__ == "__main__":
    role, prefix, count, *rest = sys.argv[1:]
    main(role, prefix, int(count), int(rest[0]) if rest else 0)
