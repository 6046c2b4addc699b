"""Prometheus metrics of one process (its own registry, so roles never collide in one process).

Per-request work is one counter increment and one histogram observation; gauges of what is open
right now are read from the live connection tables when ``/metrics`` is scraped.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

Probe = Callable[[], Awaitable[None]]

_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


class Metrics:
    """The kit's metrics; roles (protocol, worker) label what they record."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self._requests = Counter(
            "kit_requests",
            "HTTP responses by status code and WebSocket closes by close code",
            ["role", "kind", "status"],
            registry=self.registry,
        )
        self._latency = Histogram(
            "kit_request_duration_seconds",
            "HTTP request latency, first byte in to last byte out",
            ["role"],
            buckets=_BUCKETS,
            registry=self.registry,
        )
        self.inflight = Gauge(
            "kit_inflight_connections",
            "Connections in flight (protocol: waiting for a worker or assigned to one)",
            ["role", "state"],
            registry=self.registry,
        )
        self.websockets = Gauge(
            "kit_open_websockets", "Accepted WebSockets open now", ["role"], registry=self.registry
        )
        self.layer = Gauge(
            "kit_layer", "The channel layer's stats() counters", ["stat"], registry=self.registry
        )
        self._children: dict[tuple[str, str, int], Counter] = {}
        self._probes: list[Probe] = []

    def count(self, role: str, kind: str, status: int) -> None:
        key = (role, kind, status)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = self._requests.labels(role, kind, str(status))
        child.inc()

    def observe(self, role: str, seconds: float) -> None:
        self._latency.labels(role).observe(seconds)

    def add_probe(self, probe: Probe) -> None:
        """Register a coroutine that refreshes gauges just before a scrape."""
        self._probes.append(probe)

    async def render(self) -> bytes:
        for probe in self._probes:
            await probe()
        return generate_latest(self.registry)
