"""The cloud service's Prometheus metrics: each method moves the metrics it should."""

from __future__ import annotations

import urllib.request

from prometheus_client.parser import text_string_to_metric_families

from cloud.service.metrics import ServiceMetrics


def samples(m: ServiceMetrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(m.render().decode()):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def value(m: ServiceMetrics, name: str, **labels: str) -> float:
    return samples(m).get(("autoglm_cloud_" + name, tuple(sorted(labels.items()))), 0.0)


def test_request_lifecycle_counts_status_latencies_and_tokens() -> None:
    m = ServiceMetrics()
    m.request_started()
    assert value(m, "in_flight") == 1
    m.request_finished("ok", 0.002, 0.05, 1.5, 12, 30, 20, 15)
    assert value(m, "in_flight") == 0
    assert value(m, "requests_total", status="ok") == 1
    assert value(m, "queue_seconds_count") == 1
    assert value(m, "queue_seconds_sum") == 0.002
    assert value(m, "queue_seconds_bucket", le="0.0025") == 1
    assert value(m, "queue_seconds_bucket", le="0.001") == 0
    assert value(m, "ttft_seconds_sum") == 0.05
    assert value(m, "e2e_seconds_bucket", le="2.5") == 1
    assert value(m, "e2e_seconds_bucket", le="1.0") == 0
    assert value(m, "prompt_tokens_total") == 12
    assert value(m, "completion_tokens_total") == 30
    assert value(m, "draft_tokens_total") == 20
    assert value(m, "draft_tokens_accepted_total") == 15


def test_missing_latencies_are_not_observed() -> None:
    """A request cancelled while queued has no queue time and no first token."""
    m = ServiceMetrics()
    m.request_started()
    m.request_finished("cancelled", None, None, 0.3, 5, 0, 0, 0)
    assert value(m, "requests_total", status="cancelled") == 1
    assert value(m, "queue_seconds_count") == 0
    assert value(m, "ttft_seconds_count") == 0
    assert value(m, "e2e_seconds_count") == 1


def test_tokens_queue_and_batches() -> None:
    m = ServiceMetrics()
    m.token_emitted(0.02)
    m.token_emitted(0.04)
    assert value(m, "inter_token_seconds_count") == 2
    assert value(m, "inter_token_seconds_bucket", le="0.025") == 1
    m.set_queue(running=3, waiting=7)
    assert (value(m, "running"), value(m, "waiting")) == (3, 7)
    m.set_queue(running=0, waiting=1)
    assert (value(m, "running"), value(m, "waiting")) == (0, 1)
    m.observe_batch(5)
    assert value(m, "batch_size_bucket", le="4.0") == 0
    assert value(m, "batch_size_bucket", le="8.0") == 1
    assert value(m, "batch_size_bucket", le="64.0") == 1


def test_two_instances_do_not_clash() -> None:
    a, b = ServiceMetrics(), ServiceMetrics()
    a.request_started()
    a.request_finished("error", None, None, 0.1, 1, 0, 0, 0)
    assert value(a, "requests_total", status="error") == 1
    assert value(b, "requests_total", status="error") == 0
    assert b"autoglm_cloud_e2e_seconds_bucket" in b.render()


def test_start_http_serves_this_registry() -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    m = ServiceMetrics()
    m.set_queue(running=2, waiting=0)
    m.start_http(port)
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as resp:
        body = resp.read()
    assert b"autoglm_cloud_running 2.0" in body
