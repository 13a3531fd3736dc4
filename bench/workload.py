"""One workload sent to edge daemons the way apps send it, and what came back.

The hybrid benchmark and the demo both use this: a fixed, seeded list of task prompts (every
family, the held-out one included, and every tier, uniformly, from the test split the pack never
trained or calibrated on), sent over gRPC to one or more edge daemons with a route preference
per request (``edge_only``, ``cloud_only`` or ``auto``), under a closed loop (N clients, each
sending its next request when the last one is answered) or an open loop (Poisson arrivals at a
rate, each request sent on time whether or not earlier ones are done). Latency is measured from
the moment a request was due, so a server that falls behind an open loop is charged for it.

Each answer is scored exactly against the task's reference; ``summarize`` turns the outcomes of
one run into the numbers the reports print.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal

import grpc

from bench.stats import summary
from shared.rpc import inference_pb2 as pb
from shared.rpc import inference_pb2_grpc
from toolkit import tasks

Mode = Literal["edge_only", "cloud_only", "auto"]
MODES: tuple[Mode, ...] = ("edge_only", "cloud_only", "auto")
LABELS: dict[str, str] = {"edge_only": "all-edge", "cloud_only": "all-cloud", "auto": "hybrid"}
_PREFERENCE = {
    "edge_only": pb.ROUTE_PREFERENCE_EDGE_ONLY,
    "cloud_only": pb.ROUTE_PREFERENCE_CLOUD_ONLY,
    "auto": pb.ROUTE_PREFERENCE_AUTO,
}
CALL_TIMEOUT_S = 30.0  # an app's deadline per request


def make_workload(n: int, seed: int) -> list[tasks.Example]:
    """``n`` distinct test-split examples, (family, tier) cells drawn uniformly."""
    rng = random.Random(f"workload:{seed}")
    cells = [(f, t) for f in tasks.FAMILIES for t in tasks.TIERS]
    seen: dict[str, tasks.Example] = {}
    while len(seen) < n:
        family, tier = rng.choice(cells)
        ex = tasks.sample(rng, family, tier, "test")
        seen.setdefault(ex.prompt, ex)
    return list(seen.values())


@dataclass
class Outcome:
    """One request's fate."""

    index: int  # position in the workload
    mode: str
    edge: str  # the edge daemon it was sent to
    code: str  # gRPC status name; "OK" when answered
    route: str  # EDGE, CLOUD, EDGE_FALLBACK, CACHE; "" when it failed
    correct: bool
    confidence: float
    latency_ms: float  # from when it was due to when the answer arrived
    text: str
    escalation_reason: str

    @property
    def ok(self) -> bool:
        return self.code == "OK"


@dataclass
class Load:
    """Closed loop with ``concurrency`` clients, or open loop at ``rate`` requests per second."""

    kind: Literal["closed", "open"] = "closed"
    concurrency: int = 4
    rate: float = 20.0
    seed: int = 0

    def describe(self) -> str:
        if self.kind == "closed":
            return f"closed loop, {self.concurrency} concurrent clients"
        return f"open loop, Poisson arrivals at {self.rate:g} requests/s"


async def _one(
    stubs: Sequence[inference_pb2_grpc.InferenceStub],
    addresses: Sequence[str],
    examples: Sequence[tasks.Example],
    index: int,
    mode: str,
    max_new_tokens: int,
    due: float,
) -> Outcome:
    ex, k = examples[index], index % len(stubs)  # requests alternate between the edges
    request = pb.GenerateRequest(
        prompt=ex.prompt,
        sampling=pb.SamplingParams(max_new_tokens=max_new_tokens),
        route=_PREFERENCE[mode],
    )
    try:
        reply = await stubs[k].Generate(request, timeout=CALL_TIMEOUT_S)
    except grpc.aio.AioRpcError as exc:
        latency = 1000 * (time.perf_counter() - due)
        return Outcome(index, mode, addresses[k], exc.code().name, "", False, 0.0, latency, "", "")
    latency = 1000 * (time.perf_counter() - due)
    return Outcome(
        index=index,
        mode=mode,
        edge=addresses[k],
        code="OK",
        route=pb.Route.Name(reply.route).removeprefix("ROUTE_"),
        correct=tasks.score(ex, reply.text),
        confidence=float(reply.confidence),
        latency_ms=latency,
        text=reply.text,
        escalation_reason=reply.escalation_reason,
    )


async def _run(
    addresses: Sequence[str],
    examples: Sequence[tasks.Example],
    indices: Sequence[int],
    mode: str,
    load: Load,
    max_new_tokens: int,
    on_done: Callable[[Outcome], None],
) -> tuple[list[Outcome], float]:
    channels = [grpc.aio.insecure_channel(a) for a in addresses]
    stubs = [inference_pb2_grpc.InferenceStub(ch) for ch in channels]
    outcomes: list[Outcome] = []

    async def send(index: int, due: float) -> None:
        out = await _one(stubs, addresses, examples, index, mode, max_new_tokens, due)
        outcomes.append(out)
        on_done(out)

    try:
        for ch in channels:  # connect first: the run measures requests, not handshakes
            await asyncio.wait_for(ch.channel_ready(), CALL_TIMEOUT_S)
        start = time.perf_counter()
        if load.kind == "closed":
            queue = list(reversed(indices))

            async def client() -> None:
                while queue:
                    await send(queue.pop(), time.perf_counter())

            await asyncio.gather(*(client() for _ in range(max(1, load.concurrency))))
        else:
            rng = random.Random(f"arrivals:{load.seed}:{mode}")
            due, tasks_ = start, []
            for index in indices:
                due += rng.expovariate(load.rate)
                await asyncio.sleep(max(0.0, due - time.perf_counter()))
                tasks_.append(asyncio.create_task(send(index, due)))
            await asyncio.gather(*tasks_)
        wall = time.perf_counter() - start
    finally:
        for ch in channels:
            await ch.close(None)
    outcomes.sort(key=lambda o: o.index)
    return outcomes, wall


def run(
    addresses: Sequence[str],
    examples: Sequence[tasks.Example],
    mode: str,
    load: Load,
    *,
    max_new_tokens: int,
    indices: Sequence[int] | None = None,
    on_done: Callable[[Outcome], None] = lambda _: None,
) -> tuple[list[Outcome], float]:
    """Send ``examples`` (or those at ``indices``) to the edges with route preference ``mode``;
    returns the outcomes in workload order and the wall time in seconds."""
    chosen = list(range(len(examples))) if indices is None else list(indices)
    return asyncio.run(_run(addresses, examples, chosen, mode, load, max_new_tokens, on_done))


def summarize(outcomes: Sequence[Outcome], wall_s: float) -> dict[str, Any]:
    """Accuracy, routes, failures, latency (all and per route) and throughput of one run."""
    n = len(outcomes)
    answered = [o for o in outcomes if o.ok]
    routes: dict[str, int] = {}
    for o in answered:
        routes[o.route] = routes.get(o.route, 0) + 1
    failures: dict[str, int] = {}
    for o in outcomes:
        if not o.ok:
            failures[o.code] = failures.get(o.code, 0) + 1
    return {
        "requests": n,
        "answered": len(answered),
        "failed": n - len(answered),
        "failures": failures,
        "accuracy": sum(o.correct for o in outcomes) / n if n else 0.0,
        "routes": routes,
        "cloud_share": routes.get("CLOUD", 0) / n if n else 0.0,
        "edge_share": (routes.get("EDGE", 0) + routes.get("CACHE", 0)) / n if n else 0.0,
        "latency_ms": summary([o.latency_ms for o in answered]),
        "latency_ms_by_route": {
            r: summary([o.latency_ms for o in answered if o.route == r]) for r in routes
        },
        "throughput_rps": n / wall_s if wall_s > 0 else 0.0,
        "wall_s": wall_s,
    }


def as_records(outcomes: Sequence[Outcome]) -> list[dict[str, Any]]:
    return [asdict(o) for o in outcomes]
