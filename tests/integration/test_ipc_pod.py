"""3. The IPC pod: protocol server and worker share one IPC namespace and /dev/shm, the worker
has no network at all (so the layer's shared memory is its only channel), and a container
outside that namespace sees none of the layer's segments and cannot open them."""

from __future__ import annotations

import json
import os
from typing import Any

import httpx
import pytest

from tests.integration.stack import IMAGE, Stack, docker

pytestmark = pytest.mark.integration

PREFIX = os.environ.get("IPC_PREFIX", "kit")

# What a container sees: its IPC namespace, /dev/shm (each entry: regular file = a shared-memory
# segment, fifo = a doorbell), its network interfaces.
PROBE = """
import json, os, socket, stat
kinds = {n: "fifo" if stat.S_ISFIFO(os.lstat("/dev/shm/" + n).st_mode) else "file"
         for n in os.listdir("/dev/shm")}
print(json.dumps({
    "ipc_ns": os.readlink("/proc/self/ns/ipc"),
    "shm": dict(sorted(kinds.items())),
    "interfaces": [name for _, name in socket.if_nameindex()],
}))
"""

OPEN = """
import json, sys, posix_ipc
result = {}
for name in sys.argv[1:]:
    try:
        posix_ipc.SharedMemory("/" + name).close_fd()
        result[name] = "opened"
    except posix_ipc.ExistentialError as error:
        result[name] = f"ExistentialError: {error}"
print(json.dumps(result))
"""


def outside(code: str, *args: str) -> str:
    """Run Python in a fresh container of the app image with its own (private) IPC namespace."""
    isolation = ["--network", "none", "--read-only", "--cap-drop", "ALL"]
    run = ["run", "--rm", *isolation, "--entrypoint", "python3", IMAGE, "-c", code, *args]
    return docker(*run).stdout


def probe(stack: Stack, service: str) -> dict[str, Any]:
    result: dict[str, Any] = json.loads(stack.python(service, PROBE))
    return result


def test_ipc_pod_shares_shm_and_outsiders_see_nothing(stack: Stack) -> None:
    # Traffic first, so the segment is certainly in use: served by the network-less worker.
    with httpx.Client(base_url=stack.url("ipc-protocol"), timeout=10) as client:
        status = client.get("/status").json()
    assert status["hostname"] == stack.hostname("ipc-worker")
    assert status["backend"].startswith("layer.ipc.")

    protocol, worker = probe(stack, "ipc-protocol"), probe(stack, "ipc-worker")
    assert protocol["ipc_ns"] == worker["ipc_ns"]
    assert protocol["shm"] == worker["shm"]
    mine = [name for name in protocol["shm"] if name.startswith(PREFIX)]
    segments = [name for name in mine if protocol["shm"][name] == "file"]
    assert segments, protocol["shm"]
    assert worker["interfaces"] == ["lo"]  # no network: /dev/shm is the only way to the protocol

    # A container from the same image, outside the pod's IPC namespace.
    outsider = json.loads(outside(PROBE))
    assert outsider["ipc_ns"] != protocol["ipc_ns"]
    assert not [name for name in outsider["shm"] if name.startswith(PREFIX)]
    opened = json.loads(outside(OPEN, *segments))
    assert all(result.startswith("ExistentialError") for result in opened.values()), opened
    inside = json.loads(stack.python("ipc-worker", OPEN.replace("sys.argv[1:]", repr(segments))))
    assert all(result == "opened" for result in inside.values()), inside
    print(
        f"ipc: pod namespace {protocol['ipc_ns']} holds {protocol['shm']}; outsider "
        f"{outsider['ipc_ns']} sees {outsider['shm']} and opening them gives {opened}"
    )
