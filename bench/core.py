"""What every benchmark suite returns, and small timing helpers shared by suites.

Suites measure rates (higher is better) so that a report can show ratios against a peer measured
in the same run: on a shared, noisy machine only same-run ratios mean anything.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field


@dataclass
class Result:
    """One measured rate: ``subject`` did ``workload`` at ``value`` ``unit`` (higher is better)."""

    workload: str
    subject: str
    value: float
    unit: str


@dataclass
class Target:
    """``subject`` must reach ``min_ratio`` x ``baseline`` on ``workload`` in the same run."""

    workload: str
    subject: str
    baseline: str
    min_ratio: float


@dataclass
class SuiteResult:
    name: str
    title: str
    results: list[Result]
    targets: list[Target] = field(default_factory=list)
    notes: str = ""
    # Workloads named "<kind>, <x>" (e.g. "streamed, 4 KiB"): plot a line per subject and kind
    # over x, on a log scale, instead of bars per workload.
    lines: bool = False

    def value(self, workload: str, subject: str) -> float | None:
        for result in self.results:
            if result.workload == workload and result.subject == subject:
                return result.value
        return None


async def best_rate(
    operation: Callable[[int], Awaitable[None]], count: int, repeats: int = 3
) -> float:
    """Operations per second of ``operation(count)``, best of ``repeats`` (least disturbed run)."""
    best = 0.0
    for _ in range(repeats):
        started = time.perf_counter()
        await operation(count)
        best = max(best, count / (time.perf_counter() - started))
    return best
