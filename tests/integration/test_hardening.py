"""6. Every container runs as uid 10001 with a read-only root filesystem, no capabilities and
no-new-privileges; Redis is reachable from the pods and from nothing else, the host included."""

from __future__ import annotations

import fcntl
import ipaddress
import json
import socket
import struct

import pytest

from tests.integration.stack import Stack, docker

pytestmark = pytest.mark.integration

# sh is in every image (redis has no Python): uid, a write to /, effective capabilities.
CHECK = "id -u; touch /probe 2>&1 || true; grep CapEff /proc/self/status"


def host_addresses() -> list[ipaddress.IPv4Address]:
    """The host's IPv4 addresses, one per interface (SIOCGIFADDR; no `ip` tool needed)."""
    found = []
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        for _, name in socket.if_nameindex():
            request = struct.pack("256s", name.encode()[:15])
            try:
                reply = fcntl.ioctl(sock.fileno(), 0x8915, request)  # SIOCGIFADDR
            except OSError:  # an interface without an IPv4 address
                continue
            found.append(ipaddress.IPv4Address(reply[20:24]))
    return found


def test_containers_are_non_root_read_only_and_unprivileged(stack: Stack) -> None:
    services = stack.services()
    assert len(services) == 14, services
    for service in services:
        info = stack.inspect(service)
        host = info["HostConfig"]
        assert host["ReadonlyRootfs"] is True, service
        assert host["CapDrop"] == ["ALL"], service
        assert "no-new-privileges:true" in host["SecurityOpt"], service
        assert host["Memory"] > 0 and host["NanoCpus"] > 0 and host["PidsLimit"] > 0, service
        uid, touch, caps = stack.exec(service, "sh", "-c", CHECK).splitlines()
        assert uid == "10001", service
        assert "Read-only file system" in touch, (service, touch)
        assert caps.split() == ["CapEff:", "0000000000000000"], service


def test_redis_is_reachable_only_from_the_pods(stack: Stack) -> None:
    redis = [s for s in stack.services() if s.startswith("redis-")]
    assert len(redis) == 3
    addresses = host_addresses()
    for service in redis:
        info = stack.inspect(service)
        # Nothing published: no host port leads to it.
        assert all(not b for b in info["NetworkSettings"]["Ports"].values()), service
        networks = info["NetworkSettings"]["Networks"]
        assert len(networks) == 1, networks
        (network,) = networks
        details = json.loads(docker("network", "inspect", network).stdout)[0]
        assert details["Internal"] is True
        # The host holds no address on the shards' bridge: it has no path to them at all.
        subnet = ipaddress.ip_network(details["IPAM"]["Config"][0]["Subnet"])
        assert not [a for a in addresses if a in subnet], (subnet, addresses)
    # A pod reaches the shard, but only its ACL user gets answers; the combined container,
    # not on the shards network, does not reach it at all.
    reach = (
        "import os, socket\n"
        "try:\n"
        "    s = socket.create_connection(('redis-0', 6379), timeout=3); s.sendall(b'PING\\r\\n')\n"
        "    print(s.recv(64).decode().split()[0])\n"
        "except OSError as error:\n"
        "    print(type(error).__name__)\n"
    )
    assert stack.python("pod-a-worker", reach).strip() == "-NOAUTH"
    assert stack.python("local-a-worker", reach).strip() == "-NOAUTH"  # groups cross Redis
    assert stack.python("combined", reach).strip() == "gaierror"


# As the layer's ACL user, with the password the container got from .secrets/redis.env.
AS_LAYER = (
    "import os, redis\n"
    "r = redis.Redis(host='redis-0', username=os.environ['REDIS_USERNAME'],\n"
    "                password=os.environ['REDIS_PASSWORD'])\n"
    "print(r.ping())\n"
    "for command in ({commands}):\n"
    "    try:\n"
    "        r.execute_command(*command)\n"
    "        print('allowed', command[0])\n"
    "    except redis.ResponseError as error:\n"
    "        print('refused', command[0], str(error).split()[0])\n"
)


def test_the_layers_redis_user_cannot_touch_the_server(stack: Stack) -> None:
    """From a pod, with the layer's credentials: PING works; FLUSHALL, CONFIG, DEBUG, KEYS,
    SHUTDOWN and keys outside the layer's prefixes are refused by the ACL."""
    commands = [
        ("FLUSHALL",),
        ("CONFIG", "SET", "protected-mode", "no"),
        ("DEBUG", "SLEEP", "0"),
        ("KEYS", "*"),
        ("SHUTDOWN", "NOSAVE"),
        ("RPUSH", "other:x", "1"),
    ]
    out = stack.python("pod-a-worker", AS_LAYER.format(commands=repr(commands)[1:-1] + ",")).split(
        "\n"
    )
    assert out[0] == "True", out
    refused = [line for line in out[1:] if line]
    assert len(refused) == len(commands), refused
    for line, command in zip(refused, commands, strict=True):
        assert line.startswith(f"refused {command[0]} "), line
    stack.exec("redis-0", "redis-ready", "6379")  # still up: its health check passes (exit 0)
    assert stack.state("redis-0")["health"] == "healthy"
