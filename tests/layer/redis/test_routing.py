"""Consistent hashing and ``hosts`` parsing of the Redis backend (no server needed)."""

from __future__ import annotations

import asyncio
import collections
import ssl

import pytest

from layer.exceptions import InvalidOption
from layer.redis import RedisChannelLayer
from layer.redis.hosts import parse_hosts
from layer.redis.ring import HashRing

NAMES = [f"chat.room-{i}" for i in range(10_000)]


def shards(count: int) -> list[tuple[str, str]]:
    return [(f"10.0.0.{i}:6379/0", f"s{i}") for i in range(count)]


@pytest.mark.parametrize("count", [2, 3, 5])
def test_ring_spreads_names_evenly(count: int) -> None:
    ring = HashRing(shards(count))
    load = collections.Counter(ring.node_for(name) for name in NAMES)
    assert set(load) == {f"s{i}" for i in range(count)}
    share = len(NAMES) / count
    assert all(0.75 * share < n < 1.25 * share for n in load.values()), load


@pytest.mark.parametrize("count", [1, 2, 3, 4, 7])
def test_adding_a_shard_moves_about_one_in_n_plus_one(count: int) -> None:
    before, after = HashRing(shards(count)), HashRing(shards(count + 1))
    moved = [n for n in NAMES if before.node_for(n) != after.node_for(n)]
    assert all(after.node_for(n) == f"s{count}" for n in moved), "only moves to the new shard"
    expected = len(NAMES) / (count + 1)
    assert 0.7 * expected < len(moved) < 1.3 * expected, (len(moved), expected)


def test_crc32_mod_n_would_move_most_names() -> None:
    """The channels_redis scheme this replaces, for contrast."""
    import binascii

    def crc(name: str, n: int) -> int:
        return int((binascii.crc32(name.encode()) & 0xFFF) / (4096 / n))

    moved = sum(crc(n, 3) != crc(n, 4) for n in NAMES)
    assert moved > 0.4 * len(NAMES)  # vs about 1/4 on the ring


def test_ring_ignores_host_order() -> None:
    forward, backward = HashRing(shards(3)), HashRing(list(reversed(shards(3))))
    assert all(forward.node_for(n) == backward.node_for(n) for n in NAMES[:2000])


async def test_process_specific_channels_route_by_prefix_to_one_shard() -> None:
    layer = RedisChannelLayer(hosts=[f"redis://127.0.0.1:{p}/0" for p in (6390, 6391, 6392)])
    names = [await layer.new_channel() for _ in range(200)]
    assert len({layer.shard_of(name) for name in names}) == 1
    assert len({layer.shard_of(f"specific.{i}!x") for i in range(300)}) == 3
    assert layer.shard_of("http.response!abc") == layer.shard_of("http.response!zzz")
    await asyncio.sleep(0)


def test_hosts_accepts_what_channels_redis_accepts() -> None:
    specs = parse_hosts(
        [
            ("10.1.1.1", 6380),
            ["10.1.1.2", 6381],
            "redis://user:pw@10.1.1.3:6382/2",
            "rediss://:pw@10.1.1.4:6383/0?ssl_cert_reqs=none",
            "unix:///run/redis.sock?db=3",
            {"address": "redis://10.1.1.5:6384", "db": 4},
            {"host": "10.1.1.6", "port": 6385, "password": "pw"},
            {"sentinels": [("10.1.1.7", 26379)], "master_name": "mymaster", "db": 1},
        ],
        socket_timeout=2.0,
        connect_timeout=1.0,
    )
    names = [spec.name for spec in specs]
    assert names == [
        "10.1.1.1:6380/0",
        "10.1.1.2:6381/0",
        "10.1.1.3:6382/2",
        "10.1.1.4:6383/0",
        "unix:/run/redis.sock/3",
        "10.1.1.5:6384/4",
        "10.1.1.6:6385/0",
        "sentinel:mymaster/1",
    ]
    assert all("pw" not in name for name in names)
    kwargs = specs[2].pool.connection_kwargs
    assert (kwargs["username"], kwargs["password"], kwargs["socket_timeout"]) == ("user", "pw", 2.0)
    assert specs[3].pool.connection_kwargs["ssl_cert_reqs"] in ("none", ssl.CERT_NONE)
    assert specs[0].pool.connection_kwargs["socket_connect_timeout"] == 1.0


@pytest.mark.parametrize(
    ("hosts", "error"),
    [
        ("redis://localhost", "list of Redis hosts"),
        ([], "at least one"),
        ([("h",)], r"hosts\[0\] must be a \(host, port\) pair"),
        ([42], r"hosts\[0\] must be a URL string"),
        (["http://x"], r"hosts\[0\]: cannot use Redis URL"),
        ([{"sentinels": [("h", 1)]}], "master_name"),
        (["redis://a:1/0", ("a", 1)], "more than once"),
        ([{"hots": "x"}], r"hosts\[0\]: bad connection option"),
    ],
)
def test_bad_hosts_are_named(hosts: object, error: str) -> None:
    with pytest.raises(InvalidOption, match=error):
        parse_hosts(hosts, socket_timeout=1.0, connect_timeout=1.0)


@pytest.mark.parametrize(
    ("options", "error"),
    [
        ({"prefix": "bad prefix"}, "prefix"),
        ({"socket_timeout": 0}, "socket_timeout"),
        ({"symmetric_encryption_keys": "one-key"}, "symmetric_encryption_keys"),
        ({"symmetric_encryption_keys": [""]}, "symmetric_encryption_keys"),
    ],
)
def test_bad_layer_options_are_named(options: dict[str, object], error: str) -> None:
    with pytest.raises(InvalidOption, match=error):
        RedisChannelLayer(**options)
