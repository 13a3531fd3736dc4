"""The floor under ``autoglm bench overload``: how fast can this machine refuse a burst at all?

``autoglm bench overload`` floods a real server whose engine is busy. This script takes the
engine out of the picture: the server it starts is ``autoglm cloud serve`` with admission
patched to refuse every Generate call (RESOURCE_EXHAUSTED, through the same code path as a full
queue), so the engine never runs. It then times bursts of ``--burst`` calls sent at once:

- health checks (the cheapest call there is) and refused Generate calls;
- from two clients: h2load (nghttp2's C load generator, when installed: ``apt-get install
  nghttp2-client``; almost no CPU of its own) and the Python client of the benchmark;
- with the second core idle, and with a CPU-bound process on it (what an engine in its own
  process, busy decoding, would take from the server).

Every combination runs once per round, rounds interleaved; the table shows median p99s.

Usage:
    .venv/bin/python bench/overload_floor.py [--pack packs/demo/latest] [--rounds 6]
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run from a checkout without the package installed
    sys.path.insert(0, str(ROOT))

from bench.overload import TOKEN, flood, flood_health  # noqa: E402
from bench.stack.processes import CloudServer  # noqa: E402
from bench.stats import percentile  # noqa: E402

HEALTH = "/grpc.health.v1.Health/Check"
GENERATE = "/autoglm.v1.Inference/Generate"


def serve_refusing(argv: list[str]) -> int:
    """``autoglm ARGV`` with every Generate refused as if the engine's queue were full."""
    from autoglm_cli import main
    from cloud.engine.loop import AsyncEngine
    from cloud.engine.scheduler import QueueFull

    def always_full(self: AsyncEngine) -> None:
        raise QueueFull("overload_floor: admission refuses every request")

    AsyncEngine.check_admission = always_full  # type: ignore[method-assign]
    return main(argv)


def grpc_frame(message: bytes) -> bytes:
    """A gRPC length-prefixed message (uncompressed), as h2load sends it as the request body."""
    return b"\0" + struct.pack(">I", len(message)) + message


def h2load_p99(address: str, path: str, body: Path, n: int) -> float:
    """p99 ms of ``n`` calls sent at once on one HTTP/2 connection by h2load."""
    with tempfile.NamedTemporaryFile(suffix=".log") as log:
        cmd = ["h2load", "-n", str(n), "-c", "1", "-m", str(n), "-d", str(body)]
        for header in ("content-type: application/grpc", "te: trailers"):
            cmd += ["-H", header]
        cmd += ["-H", f"authorization: Bearer {TOKEN}", "--log-file", log.name]
        out = subprocess.run([*cmd, f"http://{address}{path}"], capture_output=True, text=True)
        times = [int(line.split()[2]) / 1000 for line in Path(log.name).read_text().splitlines()]
    if len(times) != n or f"{n} succeeded" not in out.stdout:
        raise RuntimeError(f"h2load did not complete {n} calls:\n{out.stdout}{out.stderr}")
    return percentile(times, 99)


def python_p99(address: str, call: str, n: int) -> float:
    if call == "health":
        return percentile(flood_health(address, n), 99) * 1000
    results = flood(address, n, 16)
    codes = {code for code, _ in results}
    if codes != {"RESOURCE_EXHAUSTED"}:
        raise RuntimeError(f"expected every call refused, got {codes}")
    return percentile([t for _, t in results], 99) * 1000


def measure(pack: Path, burst: int, rounds: int) -> dict[str, list[float]]:
    from grpc_health.v1 import health_pb2

    from shared.rpc import inference_pb2

    clients = ["h2load", "python"] if shutil.which("h2load") else ["python"]
    results: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory(prefix="autoglm-floor-") as tmp:
        work = Path(tmp)
        (work / "tokens").write_text(TOKEN + "\n")
        request = inference_pb2.GenerateRequest(prompt="rev abcdefg=")
        bodies = {"health": work / "health.bin", "refusal": work / "generate.bin"}
        bodies["health"].write_bytes(
            grpc_frame(health_pb2.HealthCheckRequest().SerializeToString())
        )
        bodies["refusal"].write_bytes(grpc_frame(request.SerializeToString()))
        server = CloudServer(
            pack, work, args=["--tokens-file", str(work / "tokens")],
            launcher=(__file__, "--serve-refusing"),
        )  # fmt: skip
        try:
            server.wait_serving()
            python_p99(server.address, "refusal", burst)  # warm-up; checks every call is refused
            for _ in range(rounds):
                for busy in (False, True):
                    burner = None
                    if busy:  # a stand-in for an engine process decoding on the other core
                        burner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
                        time.sleep(0.2)
                    try:
                        for client in clients:
                            for call in ("health", "refusal"):
                                if client == "h2load":
                                    path = HEALTH if call == "health" else GENERATE
                                    p99 = h2load_p99(server.address, path, bodies[call], burst)
                                else:
                                    p99 = python_p99(server.address, call, burst)
                                key = f"{client} {call} {'core busy' if busy else 'core idle'}"
                                results.setdefault(key, []).append(p99)
                    finally:
                        if burner is not None:
                            burner.kill()
                            burner.wait()
        finally:
            server.stop()
    return results


def main() -> int:
    if sys.argv[1:2] == ["--serve-refusing"]:
        return serve_refusing(sys.argv[2:])
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pack", type=Path, default=Path("packs/demo/latest"))
    parser.add_argument("--burst", type=int, default=160, help="calls sent at once (10 x 16)")
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--out", type=Path, default=Path("runs/bench/overload_floor.json"))
    args = parser.parse_args()
    results = measure(args.pack, args.burst, args.rounds)
    print(f"bursts of {args.burst} calls at once; median p99 over {args.rounds} rounds")
    for key, values in results.items():
        runs = " ".join(f"{v:.0f}" for v in values)
        print(f"  {key:<34} {statistics.median(values):6.1f} ms   (rounds: {runs})")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    summary = {k: {"p99_ms_median": statistics.median(v), "p99_ms": v} for k, v in results.items()}
    record = {"burst": args.burst, "rounds": args.rounds, **summary}
    args.out.write_text(json.dumps(record, indent=1))
    print(f"JSON: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
