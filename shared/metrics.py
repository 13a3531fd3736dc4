"""Prometheus helpers both servers use: latency buckets and a registry of one's own.

Every :class:`MetricsBase` owns a :class:`prometheus_client.CollectorRegistry`, so several servers
(or tests) in one process never clash over metric names.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, generate_latest, start_http_server

# 1 ms .. 30 s, roughly three buckets per decade.
LATENCY_BUCKETS = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
)


class MetricsBase:
    """A registry of its own, served over HTTP or rendered as text."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)

    def start_http(self, port: int, addr: str = "127.0.0.1") -> None:
        """Serve ``/metrics`` of this registry over HTTP (a daemon thread)."""
        start_http_server(port, addr=addr, registry=self.registry)

    def render(self) -> bytes:
        """The metrics in the Prometheus text format."""
        return generate_latest(self.registry)

    def value(self, name: str, labels: dict[str, str] | None = None) -> float:
        """The current value of one sample (0 when it was never set): for tests and telemetry."""
        v = self.registry.get_sample_value(name, labels or {})
        return 0.0 if v is None else float(v)
