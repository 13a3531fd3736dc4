"""Prometheus metrics of the cloud service, each server with its own registry.

=============================================  =========  ==========================================
Metric                                         Type       Meaning
=============================================  =========  ==========================================
``autoglm_cloud_requests_total{status}``       counter    finished requests by final status
``autoglm_cloud_queue_seconds``                histogram  time from arrival to the first schedule
``autoglm_cloud_ttft_seconds``                 histogram  time from arrival to the first token
``autoglm_cloud_inter_token_seconds``          histogram  time between two tokens of a request
``autoglm_cloud_e2e_seconds``                  histogram  time from arrival to the end of a request
``autoglm_cloud_running``                      gauge      requests in the running batch
``autoglm_cloud_waiting``                      gauge      requests waiting to be scheduled
``autoglm_cloud_batch_size``                   histogram  requests per engine step (1..64)
``autoglm_cloud_prompt_tokens_total``          counter    prompt tokens of finished requests
``autoglm_cloud_completion_tokens_total``      counter    tokens generated for finished requests
``autoglm_cloud_draft_tokens_total``           counter    edge draft tokens offered for verification
``autoglm_cloud_draft_tokens_accepted_total``  counter    of those, the tokens the full model kept
``autoglm_cloud_in_flight``                    gauge      requests started and not yet finished
=============================================  =========  ==========================================

Every :class:`ServiceMetrics` has a registry of its own (:class:`shared.metrics.MetricsBase`).
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

from shared.metrics import LATENCY_BUCKETS, MetricsBase

PREFIX = "autoglm_cloud_"
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64)


class ServiceMetrics(MetricsBase):
    """The service's counters, gauges and histograms, in a registry of their own."""

    def __init__(self) -> None:
        super().__init__()
        reg = self.registry

        def hist(name: str, doc: str, buckets: tuple[float, ...]) -> Histogram:
            return Histogram(PREFIX + name, doc, buckets=buckets, registry=reg)

        self.requests = Counter(
            PREFIX + "requests_total", "Finished requests by status.", ["status"], registry=reg
        )
        self.queue_seconds = hist("queue_seconds", "Arrival to first schedule.", LATENCY_BUCKETS)
        self.ttft_seconds = hist("ttft_seconds", "Arrival to first token.", LATENCY_BUCKETS)
        self.inter_token_seconds = hist(
            "inter_token_seconds", "Time between two tokens of a request.", LATENCY_BUCKETS
        )
        self.e2e_seconds = hist("e2e_seconds", "Arrival to end of a request.", LATENCY_BUCKETS)
        self.batch_size = hist("batch_size", "Requests per engine step.", BATCH_BUCKETS)
        self.running = Gauge(PREFIX + "running", "Requests in the running batch.", registry=reg)
        self.waiting = Gauge(PREFIX + "waiting", "Requests waiting to be scheduled.", registry=reg)
        self.in_flight = Gauge(
            PREFIX + "in_flight", "Requests started and not yet finished.", registry=reg
        )
        self.prompt_tokens = Counter(
            PREFIX + "prompt_tokens_total", "Prompt tokens of finished requests.", registry=reg
        )
        self.completion_tokens = Counter(
            PREFIX + "completion_tokens_total", "Generated tokens.", registry=reg
        )
        self.draft_tokens = Counter(
            PREFIX + "draft_tokens_total",
            "Edge draft tokens offered for verification.",
            registry=reg,
        )
        self.draft_accepted = Counter(
            PREFIX + "draft_tokens_accepted_total",
            "Draft tokens the full model kept.",
            registry=reg,
        )

    def request_started(self) -> None:
        """A request arrived (counted in ``in_flight`` until :meth:`request_finished`)."""
        self.in_flight.inc()

    def request_finished(
        self,
        status: str,
        queue_s: float | None,
        ttft_s: float | None,
        e2e_s: float,
        prompt_tokens: int,
        completion_tokens: int,
        draft_tokens: int,
        draft_accepted: int,
    ) -> None:
        """Record a finished request; ``None`` latencies (never queued / no token) are skipped."""
        self.in_flight.dec()
        self.requests.labels(status=status).inc()
        if queue_s is not None:
            self.queue_seconds.observe(queue_s)
        if ttft_s is not None:
            self.ttft_seconds.observe(ttft_s)
        self.e2e_seconds.observe(e2e_s)
        self.prompt_tokens.inc(max(0, prompt_tokens))
        self.completion_tokens.inc(max(0, completion_tokens))
        self.draft_tokens.inc(max(0, draft_tokens))
        self.draft_accepted.inc(max(0, draft_accepted))

    def refused(self, status: str) -> None:
        """A request turned away before it started (counted by status, nothing else)."""
        self.requests.labels(status=status).inc()

    def token_emitted(self, inter_token_s: float) -> None:
        self.inter_token_seconds.observe(inter_token_s)

    def set_queue(self, running: int, waiting: int) -> None:
        self.running.set(running)
        self.waiting.set(waiting)

    def observe_batch(self, size: int) -> None:
        self.batch_size.observe(size)
