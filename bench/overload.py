"""``autoglm bench overload``: the real server flooded with ``factor`` x its queue bound at once.

The server is started as an operator would start it (``autoglm cloud serve``, on loopback, with a
small engine), then every request is sent at the same moment. What admission control must do
(docs/cloud.md): the requests that do not fit are refused with RESOURCE_EXHAUSTED at once (p99
of the time to that answer), the others are answered, and the server's memory stays bounded
(resident set size before and after).
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import numpy as np
from grpc_health.v1 import health_pb2, health_pb2_grpc

from bench.stack.processes import CloudServer
from bench.stats import ms, percentile
from shared.rpc import inference_pb2, inference_pb2_grpc

TOKEN = "bench-overload-token"
FLOODS = 5  # bursts per run; each is followed by a burst of health checks of the same size


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def burst(
    method: grpc.UnaryUnaryMultiCallable, requests: list[Any], **kw: Any
) -> list[tuple[str, float]]:
    """Start every call at once; (status code name, seconds to the answer) for each.

    The synchronous API's futures, timed by their done-callbacks (which run on gRPC's own
    completion thread as each answer arrives): an asyncio client would note an answer only when
    its event loop got round to that call's task, and with many calls in flight that wait shows
    in the p99 (the comparison is in docs/benchmarks.md).
    """
    done = [0.0] * len(requests)

    def on_done(i: int) -> Callable[[Any], None]:
        return lambda _: done.__setitem__(i, time.perf_counter())

    started, calls = [], []
    for i, request in enumerate(requests):
        started.append(time.perf_counter())
        call = method.future(request, **kw)
        call.add_done_callback(on_done(i))
        calls.append(call)
    codes = [call.code().name for call in calls]  # waits for every answer
    while not all(done):  # a callback may still be running when code() returns
        time.sleep(0.001)
    return [(code, d - t) for code, d, t in zip(codes, done, started, strict=True)]


def flood(address: str, n: int, max_new: int) -> list[tuple[str, float]]:
    """``n`` Generate calls at once on one connection."""
    requests = [
        inference_pb2.GenerateRequest(
            request_id=f"flood-{i}",
            prompt="rev abcdefg=",
            sampling=inference_pb2.SamplingParams(max_new_tokens=max_new),
        )
        for i in range(n)
    ]
    with grpc.insecure_channel(address) as channel:
        grpc.channel_ready_future(channel).result(timeout=10)
        stub = inference_pb2_grpc.InferenceStub(channel)
        auth = (("authorization", f"Bearer {TOKEN}"),)
        return burst(stub.Generate, requests, metadata=auth, timeout=60)


def flood_health(address: str, n: int) -> list[float]:
    """The same burst of the cheapest call there is (a health check): the floor that gRPC and
    Python put under any answer on this machine."""
    with grpc.insecure_channel(address) as channel:
        grpc.channel_ready_future(channel).result(timeout=10)
        stub = health_pb2_grpc.HealthStub(channel)
        requests = [health_pb2.HealthCheckRequest()] * n
        return [t for _, t in burst(stub.Check, requests, timeout=60)]


@dataclass
class _Tally:
    """What the floods sent to one server gave."""

    results: list[tuple[str, float]] = field(default_factory=list)  # (status, seconds)
    health: list[float] = field(default_factory=list)
    burst_p99_ms: list[float] = field(default_factory=list)
    ratios: list[float] = field(default_factory=list)  # each burst's p99 / its health p99

    def add(self, answers: list[tuple[str, float]], floor: list[float]) -> None:
        refused = [t for code, t in answers if code == "RESOURCE_EXHAUSTED"]
        if refused:  # this flood's p99 against its own floor, measured right after it
            self.burst_p99_ms.append(percentile(refused, 99) * 1000)
            self.ratios.append(self.burst_p99_ms[-1] / (percentile(floor, 99) * 1000))
        self.results += answers
        self.health += floor

    def summary(self) -> dict[str, Any]:
        exhausted = [t for code, t in self.results if code == "RESOURCE_EXHAUSTED"]
        ok = [t for code, t in self.results if code == "OK"]

        per_flood = self.burst_p99_ms
        return {
            "requests": len(self.results),
            "ok": len(ok),
            "resource_exhausted": len(exhausted),
            "other_errors": sorted({c for c, _ in self.results} - {"OK", "RESOURCE_EXHAUSTED"}),
            "exhausted_p50_ms": ms(exhausted, 50),
            "exhausted_p99_ms": ms(exhausted, 99),
            "exhausted_p99_per_flood_ms": per_flood,
            "exhausted_p99_per_flood_median_ms": float(np.median(per_flood)) if per_flood else None,
            "ok_p50_ms": ms(ok, 50),
            "health_burst_p50_ms": ms(self.health, 50),
            "health_burst_p99_ms": ms(self.health, 99),
            "exhausted_to_health_p99_median": float(np.median(self.ratios))
            if self.ratios
            else None,
        }


def bench_overload(
    pack: Path, max_waiting: int, factor: int, max_batch: int, nice_levels: list[int]
) -> dict[str, Any]:
    """One server per ``engine.nice`` level, all started at once; each flood round sends a burst
    to every server in turn (the order rotating), so machine noise hits every level alike."""
    n = factor * max_waiting
    with tempfile.TemporaryDirectory(prefix="autoglm-bench-") as tmp:
        tokens = Path(tmp) / "tokens"
        tokens.write_text(TOKEN + "\n")
        servers = {}
        for nice in nice_levels:
            env = {
                "AUTOGLM_CLOUD_ENGINE__MAX_WAITING": str(max_waiting),
                "AUTOGLM_CLOUD_ENGINE__MAX_BATCH_SIZE": str(max_batch),
                "AUTOGLM_CLOUD_ENGINE__NICE": str(nice),
            }
            args = ["--tokens-file", str(tokens)]
            servers[nice] = CloudServer(pack, Path(tmp), args=args, env=env)
        try:
            for server in servers.values():
                server.wait_serving()
                # One flood to warm up (first-call costs of gRPC and the engine), not counted.
                flood(server.address, n, 16)
            rss_before = {nice: _rss_mb(server.proc.pid) for nice, server in servers.items()}
            tallies = {nice: _Tally() for nice in nice_levels}
            for i in range(FLOODS):  # memory must not grow from one flood to the next
                k = i % len(nice_levels)
                for nice in nice_levels[k:] + nice_levels[:k]:
                    address = servers[nice].address
                    tallies[nice].add(flood(address, n, 16), flood_health(address, n))
            rss_after = {nice: _rss_mb(server.proc.pid) for nice, server in servers.items()}
        finally:
            for server in servers.values():
                server.stop()
    runs = [
        {
            "engine_nice": nice,
            **tallies[nice].summary(),
            "rss_before_mb": rss_before[nice],
            "rss_after_mb": rss_after[nice],
        }
        for nice in nice_levels
    ]
    return {
        "bench": "overload",
        "pack": str(pack),
        "queue_bound": max_waiting,
        "max_batch_size": max_batch,
        "floods": FLOODS,
        "runs": runs,
    }
