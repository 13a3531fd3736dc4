"""Prometheus metrics of the edge daemon (registry of its own, see :mod:`shared.metrics`).

========================================================  =========  ===============================
Metric                                                    Type       Meaning
========================================================  =========  ===============================
``autoglm_edge_requests_total{route,status}``             counter    finished requests; route is
                                                                     edge/cloud/edge_fallback/cache
                                                                     ("none" when refused)
``autoglm_edge_request_seconds{route}``                   histogram  arrival to answer
``autoglm_edge_escalations_total{reason}``                counter    requests sent to the cloud
``autoglm_edge_cloud_errors_total{code}``                 counter    cloud calls that failed
``autoglm_edge_proxy_seconds``                            histogram  time in the proxy per request
``autoglm_edge_in_flight``                                gauge      requests being answered
``autoglm_edge_breaker_open{target}``                     gauge      1 while a target's circuit
                                                                     breaker is open or half-open
``autoglm_edge_model_info{pack,precision,providers}``     gauge      1 for the proxy in use
``autoglm_edge_model_swaps_total{result}``                counter    hot swaps, ok or failed
========================================================  =========  ===============================
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
from prometheus_client import Counter, Gauge, Histogram

from shared.metrics import LATENCY_BUCKETS, MetricsBase

PREFIX = "autoglm_edge_"


class EdgeMetrics(MetricsBase):
    """The daemon's counters, gauges and histograms."""

    def __init__(self) -> None:
        super().__init__()
        reg = self.registry
        self.requests = Counter(
            PREFIX + "requests_total",
            "Finished requests by route and status.",
            ["route", "status"],
            registry=reg,
        )
        self.request_seconds = Histogram(
            PREFIX + "request_seconds",
            "Arrival to answer, by route.",
            ["route"],
            buckets=LATENCY_BUCKETS,
            registry=reg,
        )
        self.escalations = Counter(
            PREFIX + "escalations_total", "Requests sent to the cloud.", ["reason"], registry=reg
        )
        self.cloud_errors = Counter(
            PREFIX + "cloud_errors_total", "Failed cloud calls by status.", ["code"], registry=reg
        )
        self.proxy_seconds = Histogram(
            PREFIX + "proxy_seconds",
            "Time in the proxy per request.",
            buckets=LATENCY_BUCKETS,
            registry=reg,
        )
        self.in_flight = Gauge(PREFIX + "in_flight", "Requests being answered.", registry=reg)
        self.breaker_open = Gauge(
            PREFIX + "breaker_open",
            "1 while the target's circuit breaker is not closed.",
            ["target"],
            registry=reg,
        )
        self.model_info = Gauge(
            PREFIX + "model_info",
            "1 for the proxy in use.",
            ["pack", "precision", "providers"],
            registry=reg,
        )
        self.window = TelemetryWindow()
        self.model_swaps = Counter(
            PREFIX + "model_swaps_total", "Hot swaps by result.", ["result"], registry=reg
        )

    def watch_breakers(self, states: Callable[[], dict[str, str]]) -> None:
        """Read the breakers' states whenever the metrics are scraped."""

        def is_open(target: str) -> Callable[[], float]:
            return lambda: float(states().get(target, "closed") != "closed")

        for target in states():
            self.breaker_open.labels(target=target).set_function(is_open(target))

    def set_model(self, pack: str, precision: str, providers: list[str]) -> None:
        self.model_info.clear()
        self.model_info.labels(pack=pack, precision=precision, providers=",".join(providers)).set(1)

    def finished(self, route: str, status: str, seconds: float) -> None:
        self.requests.labels(route=route, status=status).inc()
        if status == "ok":
            self.request_seconds.labels(route=route).observe(seconds)
        self.window.record(route, status, seconds)

    def cloud_failed(self, code: str) -> None:
        self.cloud_errors.labels(code=code).inc()
        self.window.record_cloud_error()


@dataclass
class WindowStats:
    """What happened since the previous telemetry message."""

    requests: dict[str, int] = field(default_factory=dict)  # answered, by route
    errors: int = 0  # refused or failed
    cloud_errors: int = 0
    latency_ms: dict[str, float] = field(default_factory=dict)  # p50, p95 of answered requests

    @property
    def answered(self) -> int:
        return sum(self.requests.values())

    @property
    def escalation_share(self) -> float:
        """Share of answered requests that went to the cloud (answered there or fallen back)."""
        sent = self.requests.get("cloud", 0) + self.requests.get("edge_fallback", 0)
        return sent / self.answered if self.answered else 0.0


class TelemetryWindow:
    """Request outcomes since the last :meth:`drain`, bounded (oldest dropped), thread-safe.

    Histogram buckets are too coarse for p50/p95 of millisecond answers, so the window keeps
    the latencies themselves (at most ``max_samples``)."""

    def __init__(self, max_samples: int = 100_000) -> None:
        self._lock = threading.Lock()
        self._samples: deque[tuple[str, str, float]] = deque(maxlen=max_samples)
        self._cloud_errors = 0

    def record(self, route: str, status: str, seconds: float) -> None:
        with self._lock:
            self._samples.append((route, status, seconds))

    def record_cloud_error(self) -> None:
        with self._lock:
            self._cloud_errors += 1

    def drain(self) -> WindowStats:
        with self._lock:
            samples, self._samples = self._samples, deque(maxlen=self._samples.maxlen)
            cloud_errors, self._cloud_errors = self._cloud_errors, 0
        stats = WindowStats(cloud_errors=cloud_errors)
        ok = [s for r, st, s in samples if st == "ok"]
        stats.errors = len(samples) - len(ok)
        for route, status, _ in samples:
            if status == "ok":
                stats.requests[route] = stats.requests.get(route, 0) + 1
        if ok:
            p50, p95 = np.percentile(np.asarray(ok) * 1e3, [50, 95])
            stats.latency_ms = {"p50": round(float(p50), 3), "p95": round(float(p95), 3)}
        return stats
