"""``autoglm bench fetch``: what a pack download costs the inference calls beside it.

A real ``autoglm cloud serve`` on a pack, serving that pack's folder over ModelStore. For each
download rate limit asked for (``fetch_max_mib_s``, 0 = none), one server; on it, the median of
sequential ``Generate`` calls alone, then beside a client that downloads the pack in a loop from
another process (so that the two clients do not share a Python interpreter). Rounds alternate
the limits; the table shows medians and the ratio to the same server's calls alone.
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import grpc

from bench.stack.processes import CloudServer
from shared.pack.manifest import open_pack
from shared.rpc import inference_pb2 as pb
from shared.rpc import inference_pb2_grpc

_DOWNLOAD_LOOP = """
import sys, grpc
from shared.rpc import model_store_pb2, model_store_pb2_grpc
address, name, version, chunk = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
request = model_store_pb2.FetchPackRequest(name=name, version=version, chunk_size=chunk)
with grpc.insecure_channel(address) as channel:
    stub = model_store_pb2_grpc.ModelStoreStub(channel)
    while True:
        for _ in stub.FetchPack(request, timeout=600):
            pass
"""


def _generate_p50_ms(address: str, calls: int) -> float:
    times = []
    request = pb.GenerateRequest(prompt="rev abcd=", sampling=pb.SamplingParams(max_new_tokens=8))
    with grpc.insecure_channel(address) as channel:
        stub = inference_pb2_grpc.InferenceStub(channel)
        for _ in range(calls):
            t = time.perf_counter()
            stub.Generate(request, timeout=60)
            times.append(time.perf_counter() - t)
    return 1000 * statistics.median(times)


def bench_fetch(
    pack: Path, limits: list[float], calls: int, rounds: int, chunk_size: int
) -> dict[str, Any]:
    pack = pack.resolve()
    manifest = open_pack(pack)
    work = Path(tempfile.mkdtemp(prefix="bench-fetch-"))
    servers = {
        limit: CloudServer(
            pack, work, args=["--auth-disabled", "--packs-dir", str(pack.parent.parent)],
            env={"AUTOGLM_CLOUD_FETCH_MAX_MIB_S": str(limit), "AUTOGLM_CLOUD_ENGINE__NICE": "0"},
        )
        for limit in limits
    }  # fmt: skip
    alone: dict[float, list[float]] = {limit: [] for limit in limits}
    beside: dict[float, list[float]] = {limit: [] for limit in limits}
    try:
        for server in servers.values():
            server.wait_serving()
            _generate_p50_ms(server.address, 5)  # warm-up
        for _ in range(rounds):
            for limit, server in servers.items():
                alone[limit].append(_generate_p50_ms(server.address, calls))
                loop = subprocess.Popen(
                    [sys.executable, "-c", _DOWNLOAD_LOOP, server.address,
                     manifest.name, manifest.version, str(chunk_size)],
                )  # fmt: skip
                try:
                    time.sleep(1.0)  # the download loop under way
                    beside[limit].append(_generate_p50_ms(server.address, calls))
                finally:
                    loop.kill()
                    loop.wait()
    finally:
        for server in servers.values():
            server.stop()
    rows = []
    for limit in limits:
        a, b = statistics.median(alone[limit]), statistics.median(beside[limit])
        rows.append({
            "fetch_max_mib_s": limit,
            "generate_p50_ms_alone": a,
            "generate_p50_ms_beside_download": b,
            "slowdown": b / a,
            "rounds_alone": alone[limit],
            "rounds_beside": beside[limit],
        })  # fmt: skip
    return {
        "bench": "fetch",
        "pack": f"{manifest.name}/{manifest.version}",
        "calls": calls,
        "rounds": rounds,
        "chunk_size": chunk_size,
        "rows": rows,
    }
