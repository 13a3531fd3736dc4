"""``autoglm bench overload``: the real server flooded with ``factor`` x its queue bound at once.

The server is started as an operator would start it (``autoglm cloud serve``, on loopback, with a
small engine), then every request is sent at the same moment. What the issue asks of admission
control: the requests that do not fit are refused with RESOURCE_EXHAUSTED at once (p99 of the
time to that answer), the others are answered, and the server's memory stays bounded (resident
set size before and after).
"""

from __future__ import annotations

import asyncio
import tempfile
import time
from pathlib import Path
from typing import Any

import grpc
import numpy as np
from grpc_health.v1 import health_pb2, health_pb2_grpc

from shared.process import CloudServer
from shared.rpc import inference_pb2, inference_pb2_grpc

TOKEN = "bench-overload-token"
FLOODS = 5  # bursts per run; each is followed by a burst of health checks of the same size


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


async def flood(address: str, n: int, max_new: int) -> list[tuple[str, float]]:
    """Send ``n`` requests at once; (status code name, seconds to the answer) for each."""
    auth = (("authorization", f"Bearer {TOKEN}"),)
    async with grpc.aio.insecure_channel(address) as channel:
        stub = inference_pb2_grpc.InferenceStub(channel)
        await channel.channel_ready()

        async def one(i: int) -> tuple[str, float]:
            req = inference_pb2.GenerateRequest(
                request_id=f"flood-{i}",
                prompt="rev abcdefg=",
                sampling=inference_pb2.SamplingParams(max_new_tokens=max_new),
            )
            t0 = time.perf_counter()
            try:
                await stub.Generate(req, metadata=auth, timeout=60)
                code = "OK"
            except grpc.aio.AioRpcError as exc:
                code = exc.code().name
            return code, time.perf_counter() - t0

        return list(await asyncio.gather(*(one(i) for i in range(n))))


async def flood_health(address: str, n: int) -> list[float]:
    """The same burst of the cheapest call there is (a health check): the floor that gRPC and
    Python put under any answer on this machine."""
    async with grpc.aio.insecure_channel(address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        await channel.channel_ready()

        async def one() -> float:
            t0 = time.perf_counter()
            await stub.Check(health_pb2.HealthCheckRequest(), timeout=60)
            return time.perf_counter() - t0

        return list(await asyncio.gather(*(one() for _ in range(n))))


def bench_overload(pack: Path, max_waiting: int, factor: int, max_batch: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="autoglm-bench-") as tmp:
        tokens = Path(tmp) / "tokens"
        tokens.write_text(TOKEN + "\n")
        env = {
            "AUTOGLM_CLOUD_ENGINE__MAX_WAITING": str(max_waiting),
            "AUTOGLM_CLOUD_ENGINE__MAX_BATCH_SIZE": str(max_batch),
        }
        server = CloudServer(pack, Path(tmp), args=["--tokens-file", str(tokens)], env=env)
        try:
            server.wait_serving()
            # One flood to warm up (first-call costs of gRPC and the engine), not counted.
            asyncio.run(flood(server.address, factor * max_waiting, 16))
            rss_before = _rss_mb(server.proc.pid)
            results, health, ratios = [], [], []
            for _ in range(FLOODS):  # memory must not grow from one flood to the next
                answers = asyncio.run(flood(server.address, factor * max_waiting, 16))
                floor = asyncio.run(flood_health(server.address, factor * max_waiting))
                refused = [t for code, t in answers if code == "RESOURCE_EXHAUSTED"]
                if refused:  # this flood's p99 against its own floor, measured right after it
                    ratios.append(float(np.percentile(refused, 99) / np.percentile(floor, 99)))
                results += answers
                health += floor
            rss_after = _rss_mb(server.proc.pid)
        finally:
            server.stop()
    exhausted = [t for code, t in results if code == "RESOURCE_EXHAUSTED"]
    ok = [t for code, t in results if code == "OK"]
    other = sorted({code for code, _ in results} - {"OK", "RESOURCE_EXHAUSTED"})
    return {
        "bench": "overload",
        "pack": str(pack),
        "queue_bound": max_waiting,
        "max_batch_size": max_batch,
        "requests": len(results),
        "ok": len(ok),
        "resource_exhausted": len(exhausted),
        "other_errors": other,
        "exhausted_p50_ms": 1000 * float(np.percentile(exhausted, 50)) if exhausted else None,
        "exhausted_p99_ms": 1000 * float(np.percentile(exhausted, 99)) if exhausted else None,
        "ok_p50_ms": 1000 * float(np.percentile(ok, 50)) if ok else None,
        "health_burst_p50_ms": 1000 * float(np.percentile(health, 50)),
        "health_burst_p99_ms": 1000 * float(np.percentile(health, 99)),
        "floods": FLOODS,
        "exhausted_to_health_p99_median": float(np.median(ratios)) if ratios else None,
        "rss_before_mb": rss_before,
        "rss_after_mb": rss_after,
    }
