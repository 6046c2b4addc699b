"""IPC across processes at volume: most messages expiring in the queue, and 1,000+ groups with
1,000+ members in one; the segment is checked (``layer.ipc.check.verify``) after each run."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from layer.ipc import IPCChannelLayer
from layer.ipc.check import verify
from tests.layer.ipc.fixture import Worker
from tests.layer.volume import expiring, many_groups

Factory = Callable[..., IPCChannelLayer]


@pytest.mark.timeout(180)
async def test_four_by_four_with_most_messages_expiring(
    ipc_layer_factory: Factory, ipc_prefix: str, workers: list[Worker]
) -> None:
    layer = ipc_layer_factory(size="64MB", capacity=10_000)
    await expiring(layer, ipc_prefix, workers, {})
    report = verify(ipc_prefix)
    assert report.ok, report.problems
    assert (report.queued, report.groups, report.members) == (0, 0, 0), report.summary()
    assert (await layer.stats())["queued"] == 0


@pytest.mark.timeout(180)
async def test_a_thousand_groups_and_a_thousand_members(
    ipc_layer_factory: Factory, ipc_prefix: str, workers: list[Worker]
) -> None:
    # 300 group sends to 1,200 members can sit queued at once (~360,000 one-slot messages)
    # when the members fall behind on a busy host: 256 MB holds ~1 M slots; 64 MB ran full
    # and group_send rightly skipped members (a fresh-clone run lost some that way).
    layer = ipc_layer_factory(size="256MB", capacity=10_000)
    run = await many_groups(layer, ipc_prefix, workers, {})
    report = verify(ipc_prefix)
    assert report.ok, report.problems
    assert report.queued == 0, report.summary()
    assert (report.groups, report.members) == (len(run.groups), run.memberships)
    assert report.groups > 1000 and max(map(len, run.groups.values())) >= 1000
