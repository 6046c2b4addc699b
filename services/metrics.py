"""Prometheus metrics of one process, exported through prometheus_client at scrape time.

The request path only bumps plain ints (a lock-protected prometheus_client child costs several
times more, and this runs for every request); a custom collector turns them into a counter and a
histogram when ``/metrics`` is scraped. Gauges of what is open now are read from the live
connection tables by probes just before the scrape.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Awaitable, Callable, Iterator

from prometheus_client import CollectorRegistry, Gauge, generate_latest
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric

Probe = Callable[[], Awaitable[None]]

BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class HttpRecorder:
    """One role's HTTP responses by status and their latency histogram: plain ints, bumped by
    one method call per request (the hot path holds the recorder, no lookups by role)."""

    __slots__ = ("buckets", "counts", "sum")

    def __init__(self) -> None:
        self.counts: dict[int, int] = {}
        self.buckets = [0] * (len(BUCKETS) + 1)  # the last one is +Inf
        self.sum = 0.0

    def record(self, status: int, seconds: float) -> None:
        """One HTTP request: its status and latency, first byte in to last byte out."""
        counts = self.counts
        counts[status] = counts.get(status, 0) + 1
        self.buckets[bisect_left(BUCKETS, seconds)] += 1
        self.sum += seconds


class Metrics:
    """The kit's metrics; roles (protocol, worker) label what they record."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self._counts: dict[tuple[str, str, int], int] = {}
        self._bad: dict[tuple[str, str], int] = {}
        self._limits: dict[tuple[str, str], int] = {}
        self._http: dict[str, HttpRecorder] = {}
        self.registry.register(self)
        self.inflight = Gauge(
            "kit_inflight_connections",
            "Connections in flight (protocol: waiting for a worker or assigned; worker: at work"
            " or parked, waiting on its client)",
            ["role", "state"],
            registry=self.registry,
        )
        self.websockets = Gauge(
            "kit_open_websockets", "Accepted WebSockets open now", ["role"], registry=self.registry
        )
        self.layer = Gauge(
            "kit_layer", "The channel layer's stats() counters", ["stat"], registry=self.registry
        )
        self._probes: list[Probe] = []

    def count(self, role: str, kind: str, status: int) -> None:
        """One WebSocket close (close code) or other outcome of ``kind`` (``refused``: an HTTP
        client the protocol server answered or cut off itself for breaking a limit)."""
        key = (role, kind, status)
        self._counts[key] = self._counts.get(key, 0) + 1

    def bad_message(self, role: str, reason: str) -> None:
        """One message taken from the layer and dropped as malformed (``reason``: a fixed set)."""
        key = (role, reason)
        self._bad[key] = self._bad.get(key, 0) + 1

    def limit_reached(self, role: str, limit: str) -> None:
        """A protocol server refused a connection at ``limit``, or a worker stopped taking new
        ones at it (services/admission.py)."""
        key = (role, limit)
        self._limits[key] = self._limits.get(key, 0) + 1

    def http(self, role: str) -> HttpRecorder:
        """The recorder of ``role``'s HTTP requests (created on first use)."""
        recorder = self._http.get(role)
        if recorder is None:
            recorder = self._http[role] = HttpRecorder()
        return recorder

    def collect(self) -> Iterator[Metric]:
        """prometheus_client's collector interface: the request counter and latency histogram."""
        requests = CounterMetricFamily(
            "kit_requests",
            "HTTP responses by status code, WebSocket closes by close code, clients refused"
            " for breaking a limit (kind refused) by status code",
            labels=["role", "kind", "status"],
        )
        counts = dict(self._counts)
        for role, recorder in self._http.items():
            counts.update(((role, "http", status), n) for status, n in recorder.counts.items())
        for (role, kind, status), value in sorted(counts.items()):
            requests.add_metric([role, kind, str(status)], value)
        yield requests
        latency = HistogramMetricFamily(
            "kit_request_duration_seconds",
            "HTTP request latency, first byte in to last byte out",
            labels=["role"],
        )
        for role, data in sorted(self._http.items()):
            running, cumulative = 0, []
            for bound, count in zip([*map(str, BUCKETS), "+Inf"], data.buckets, strict=True):
                running += count
                cumulative.append((bound, running))
            latency.add_metric([role], cumulative, data.sum)
        yield latency
        bad = CounterMetricFamily(
            "kit_bad_messages",
            "Messages taken from the layer and dropped as malformed, by reason",
            labels=["role", "reason"],
        )
        for (role, reason), value in sorted(self._bad.items()):
            bad.add_metric([role, reason], value)
        yield bad
        limits = CounterMetricFamily(
            "kit_limit_reached",
            "Protocol: connections refused at a limit; worker: times it stopped taking new"
            " connections at a limit (connections: --max-connections, concurrency)",
            labels=["role", "limit"],
        )
        for (role, limit), value in sorted(self._limits.items()):
            limits.add_metric([role, limit], value)
        yield limits

    def add_probe(self, probe: Probe) -> None:
        """Register a coroutine that refreshes gauges just before a scrape."""
        self._probes.append(probe)

    async def render(self) -> bytes:
        for probe in self._probes:
            await probe()
        return generate_latest(self.registry)
