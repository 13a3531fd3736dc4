"""``autoglm bench``: the benchmarks' command line; ``train`` (training-step time of the demo
recipe, fp32 against bf16 autocast) lives here, the others next to what they measure.

Variants run the same inputs, interleaved round by round so that a noisy neighbour slows both
alike; the tables report medians and their ratios.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from shared.settings.cloud import EngineSettings


def register(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="bench", required=True, metavar="BENCH")
    for name, help_text in (
        ("train", "training and distillation step time, fp32 vs bf16 autocast"),
        ("cloud", "engine tokens/s, TTFT, inter-token latency with and without batching; drafts"),
        (
            "overload",
            "the real server flooded with 10x its queue bound: time to RESOURCE_EXHAUSTED",
        ),
        (
            "edge",
            "edge daemon overhead over gRPC, KV cache vs recomputation, int8 vs fp32 proxy",
        ),
        (
            "hybrid",
            "all-edge, all-cloud and hybrid on one workload through an emulated WAN",
        ),
        ("fetch", "Generate latency beside a pack download loop, per download rate limit"),
        ("all", "every benchmark above but hybrid"),
    ):
        b = sub.add_parser(name, help=help_text)
        b.add_argument("--out", type=Path, default=Path("runs/bench"), help="folder for the JSON")
        b.set_defaults(handler=_run)
        if name in ("train", "all"):
            b.add_argument(
                "--steps", type=int, default=20, help="train: steps per variant and round"
            )
        if name in ("train", "cloud", "edge", "all"):
            b.add_argument(
                "--rounds",
                type=int,
                default=5 if name == "edge" else 3,
                help="interleaved rounds (medians)",
            )
        if name == "hybrid":
            add_hybrid_options(b)
        if name == "fetch":
            b.add_argument(
                "--limits",
                type=_mib_limits,
                default=[0.0, 16.0],
                help="fetch: fetch_max_mib_s values to compare side by side (0 = no limit)",
            )
            b.add_argument("--calls", type=int, default=60, help="fetch: Generate calls a median")
            b.add_argument("--rounds", type=int, default=3, help="interleaved rounds (medians)")
            b.add_argument(
                "--chunk-size", type=int, default=0, help="fetch: chunk size asked (0 = default)"
            )
        if name in ("cloud", "overload", "edge", "hybrid", "fetch", "all"):
            b.add_argument("--pack", type=Path, default=Path("packs/demo/latest"), help="pack")
        if name in ("overload", "all"):
            b.add_argument("--queue-bound", type=int, default=16, help="overload: max_waiting")
            b.add_argument("--factor", type=int, default=10, help="overload: requests per bound")
            b.add_argument("--max-batch", type=int, default=4, help="overload: max_batch_size")
            b.add_argument(
                "--nice",
                type=_nice_levels,
                default=[EngineSettings().nice],
                help="overload: engine.nice levels to compare side by side, e.g. 0,10",
            )
        if name in ("edge", "all"):
            b.add_argument(
                "--requests", type=int, default=50, help="edge: requests per variant and round"
            )
        if name in ("cloud", "all"):
            b.add_argument("--levels", default="1,4,16,32", help="cloud: concurrent streams")
            b.add_argument("--per-stream", type=int, default=16, help="cloud: requests per stream")
            b.add_argument(
                "--per-cell", type=int, default=10, help="cloud: prompts per family/tier"
            )


def _nice_levels(text: str) -> list[int]:
    """``--nice 0,10``: distinct engine.nice levels, each in [0, 19]."""
    try:
        levels = [int(v) for v in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: comma-separated integers, e.g. 0,10") from None
    if any(not 0 <= v <= 19 for v in levels) or len(set(levels)) != len(levels):
        raise argparse.ArgumentTypeError(f"{text!r}: distinct levels between 0 and 19")
    return levels


def add_hybrid_options(b: argparse.ArgumentParser) -> None:
    b.add_argument("--requests", type=int, default=600, help="distinct prompts in the workload")
    b.add_argument("--rounds", type=int, default=3, help="rounds of the three modes, rotating")
    b.add_argument("--load", choices=["closed", "open"], default="closed", help="load model")
    b.add_argument("--concurrency", type=int, default=4, help="closed loop: concurrent clients")
    b.add_argument("--rate", type=float, default=20.0, help="open loop: requests per second")
    b.add_argument("--rtt-ms", type=float, default=50.0, help="emulated WAN round-trip time")
    b.add_argument("--jitter-ms", type=float, default=5.0, help="emulated WAN jitter")
    b.add_argument("--threshold", type=float, help="routing threshold (default: the pack's)")
    b.add_argument(
        "--no-kill-cloud", action="store_true", help="skip the phase with the cloud killed"
    )
    b.add_argument("--seed", type=int, default=0, help="workload and arrivals seed")
    b.add_argument("--json", action="store_true", help="print only the JSON report on stdout")
    b.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")


def _step_times(
    student: Any, teacher: Any, batches: list[Any], cfg: Any, bf16: bool
) -> list[float]:
    import torch

    from toolkit.train import _loss

    opt = torch.optim.AdamW(student.parameters(), lr=1e-4)
    times = []
    for b in batches:
        t0 = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = _loss(student, b, cfg, teacher)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        times.append(time.perf_counter() - t0)
    return times


def bench_train(steps: int, rounds: int) -> dict[str, Any]:
    import torch

    from cloud.model.gpt import GPT
    from shared.tokenizer import ByteTokenizer
    from toolkit import tasks
    from toolkit.build import RECIPES
    from toolkit.train import task_batches

    torch.manual_seed(0)
    recipe = RECIPES["demo"]
    tok = ByteTokenizer()
    full, proxy = GPT(recipe.full), GPT(recipe.proxy)
    jobs = {
        "full model (train)": (full, None, recipe.full_train, tasks.FAMILIES, 0.0),
        "proxy (distil)": (proxy, full.eval(), recipe.proxy_train, tasks.IN_DISTRIBUTION, 0.1),
    }
    rows = []
    for name, (student, teacher, cfg, families, noise) in jobs.items():
        it = task_batches(tok, cfg, families, noise)
        batches = [next(it) for _ in range(steps)]
        _step_times(student, teacher, batches[:3], cfg, bf16=False)  # warm-up
        samples: dict[str, list[float]] = {"fp32": [], "bf16": []}
        for _ in range(rounds):
            for variant in ("fp32", "bf16"):
                samples[variant] += _step_times(student, teacher, batches, cfg, variant == "bf16")
        fp32, bf16 = statistics.median(samples["fp32"]), statistics.median(samples["bf16"])
        rows.append(
            {
                "job": name,
                "batch_size": cfg.batch_size,
                "fp32_ms": 1000 * fp32,
                "bf16_ms": 1000 * bf16,
                "speedup": fp32 / bf16,
            }
        )
    return {"bench": "train", "torch_threads": torch.get_num_threads(), "rows": rows}


def _write(args: argparse.Namespace, name: str, result: dict[str, Any]) -> None:
    result["machine"] = {
        "cpu": platform.processor() or platform.machine(),
        "python": platform.python_version(),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"{name}.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(f"JSON: {path}\n")


def _run_train(args: argparse.Namespace) -> None:
    result = bench_train(args.steps, args.rounds)
    print(f"{'job':<20} {'batch':>5} {'fp32 ms':>9} {'bf16 ms':>9} {'speed-up':>9}")
    for r in result["rows"]:
        print(
            f"{r['job']:<20} {r['batch_size']:>5} {r['fp32_ms']:>9.1f} {r['bf16_ms']:>9.1f} "
            f"{r['speedup']:>8.2f}x"
        )
    print(f"medians over {args.rounds} x {args.steps} steps per variant")
    _write(args, "train", result)


def _run_cloud(args: argparse.Namespace) -> None:
    from bench.engine import bench_cloud

    levels = [int(x) for x in args.levels.split(",")]
    result = bench_cloud(args.pack, levels, args.per_stream, args.per_cell, args.rounds)
    print(
        f"engine on {result['pack']} (full model), closed loop, greedy; "
        f"median of {args.rounds} interleaved rounds"
    )
    print(
        f"{'streams':>7} {'batching':>8} {'tok/s':>8} {'TTFT p50':>9} {'p99':>7} "
        f"{'ITL p50':>8} {'p99':>7} {'steps':>6}"
    )
    for r in result["rows"]:
        print(
            f"{r['streams']:>7} {'on' if r['batching'] else 'off':>8} {r['tokens_per_s']:>8.1f} "
            f"{r['ttft_p50_ms']:>7.1f}ms {r['ttft_p99_ms']:>5.1f}ms {r['itl_p50_ms']:>6.1f}ms "
            f"{r['itl_p99_ms']:>5.1f}ms {r['steps']:>6}"
        )
    print(
        "batching speed-up (tokens/s): "
        + ", ".join(f"{s} streams {v:.2f}x" for s, v in result["speedup"].items())
    )
    d = result["drafts"]
    print(
        f"drafts: {d['escalated_requests']} of {d['of_requests']} requests escalated; "
        f"{d['draft_tokens_accepted_mean']:.2f} draft tokens accepted per escalated request, "
        f"{d['decode_steps_saved_mean']:.2f} of {d['decode_steps_without_draft_mean']:.2f} "
        "engine steps saved"
    )
    _write(args, "cloud", result)


def _run_overload(args: argparse.Namespace) -> None:
    from bench.overload import bench_overload

    levels = args.nice
    r = bench_overload(args.pack, args.queue_bound, args.factor, args.max_batch, levels)
    print(
        f"server on {r['pack']}: queue bound {r['queue_bound']}, max batch {r['max_batch_size']};"
        f" {r['floods']} floods of {args.factor}x the bound at once"
        + ("; one server per engine.nice level, floods alternating" if len(levels) > 1 else "")
    )
    for run in r["runs"]:
        print(
            f"engine.nice {run['engine_nice']}: {run['requests']} requests: {run['ok']} answered, "
            f"{run['resource_exhausted']} RESOURCE_EXHAUSTED, "
            f"other errors: {run['other_errors'] or 'none'}"
        )
        if run["exhausted_p99_ms"] is not None:
            per_flood = " ".join(f"{v:.0f}" for v in run["exhausted_p99_per_flood_ms"])
            print(
                f"  time to RESOURCE_EXHAUSTED: p50 {run['exhausted_p50_ms']:.1f} ms, "
                f"p99 {run['exhausted_p99_ms']:.1f} ms; per flood p99 {per_flood} ms "
                f"(median {run['exhausted_p99_per_flood_median_ms']:.1f})"
            )
        print(
            f"  the same bursts of health checks (the floor): "
            f"p50 {run['health_burst_p50_ms']:.1f} ms, p99 {run['health_burst_p99_ms']:.1f} ms"
        )
        if run["exhausted_to_health_p99_median"] is not None:
            ratio = run["exhausted_to_health_p99_median"]
            print(f"  refusal p99 / health p99, median over the floods: {ratio:.2f}x")
        rss = f"{run['rss_before_mb']:.0f} MB before, {run['rss_after_mb']:.0f} MB after"
        print(f"  server memory (RSS): {rss}")
    _write(args, "overload", r)


def _run_edge(args: argparse.Namespace) -> None:
    from bench.edge import bench_edge

    r = bench_edge(args.pack, args.rounds, args.requests)
    th = r["onnx_threads"]
    print(
        f"edge on {r['pack']}: {args.rounds} interleaved rounds x {args.requests} requests per "
        f"variant; ONNX Runtime {r['onnxruntime']}, {th['intra_op']} intra-op / "
        f"{th['inter_op']} inter-op thread(s) everywhere"
    )
    d = r["daemon_overhead"]
    print(
        f"\n1. daemon overhead: test prompts, greedy, max_new_tokens {d['max_new_tokens']}, "
        f"edge only, answer cache off (routes: {d['routes']})"
    )
    print(f"{'':<28} {'p50':>8} {'p95':>8}")
    for key, label in (
        ("daemon", "daemon over gRPC"),
        ("in_process", "same decoding in process"),
        ("health_check", "health check (gRPC floor)"),
    ):
        print(f"{label:<28} {d[key]['p50_ms']:>6.2f}ms {d[key]['p95_ms']:>6.2f}ms")
    rounds = ", ".join(f"{x:.2f}" for x in d["p50_ratio_per_round"])
    print(
        f"p50 ratio {d['p50_ratio']:.2f}x (target <= {d['target_p50_ratio']}); per round: {rounds}"
    )
    o = d["overhead_p50_ms"]
    print(
        f"where the {o['total']:.2f} ms go (p50): gRPC and wire {o['grpc_and_wire']:.2f} ms, "
        f"servicer {o['servicer']:.2f} ms, executor hop {o['executor_hop']:.2f} ms; "
        f"answers identical: {d['answers_identical']:.0%}"
    )
    lo = d["long_answer"]
    print(
        f"longest answer ({lo['prompt']!r}, max_new_tokens {lo['max_new_tokens']}): daemon "
        f"{lo['daemon']['p50_ms']:.2f} ms, in process {lo['in_process']['p50_ms']:.2f} ms, "
        f"ratio {lo['p50_ratio']:.2f}x (overhead {lo['overhead_p50_ms']['total']:.2f} ms)"
    )
    k = r["kv_cache"]
    print(
        f"\n2. KV cache against recomputing the whole sequence (target >= {k['target_speedup']}x)"
    )
    print(
        f"{'row':>3} {'prompt':>6} {'new':>4} {'context':>7} {'KV cache':>9} {'recompute':>10} "
        f"{'speed-up':>9}   last call: 1 token cached / whole sequence"
    )
    for i, row in enumerate(k["rows"], 1):
        st = row["last_step"]
        print(
            f"{i:>3} {row['prompt_tokens']:>6} {row['new_tokens']:>4} {row['context_limit']:>7} "
            f"{row['kv_cache_ms']:>7.2f}ms {row['recompute_ms']:>8.2f}ms {row['speedup']:>8.2f}x   "
            f"{st['one_token_with_cache_ms']:.3f} ms / {st['whole_sequence_ms']:.3f} ms "
            f"({st['sequence_tokens']} tokens)"
        )
    for i, row in enumerate(k["rows"], 1):
        print(f"  row {i}: {row['row']}")
    q = r["int8"]
    print("\n3. int8 against fp32 proxy (same prompts, in process)")
    if "skipped" in q:
        print(f"skipped: {q['skipped']}")
    else:
        print(f"{'':<6} {'p50':>8} {'p95':>8}")
        for key in ("fp32", "int8"):
            print(f"{key:<6} {q[key]['p50_ms']:>6.2f}ms {q[key]['p95_ms']:>6.2f}ms")
        print(
            f"int8 speed-up (p50) {q['int8_speedup']:.2f}x; greedy agreement on {q['prompts']} "
            f"prompts: tokens {q['token_agreement']:.1%}, whole answers {q['answer_agreement']:.1%}"
        )
    print(f"\nproviders: {d['providers']['in_process']} (available: {r['available_providers']})")
    _write(args, "edge", r)


def _run_hybrid(args: argparse.Namespace) -> None:
    import tempfile

    from bench.hybrid import bench_hybrid, format_report, write_outputs
    from bench.workload import Load

    say = (lambda _: None) if args.json else (lambda text: print(text, file=sys.stderr))
    with tempfile.TemporaryDirectory(prefix="autoglm-hybrid-") as tmp:
        report, phases = bench_hybrid(
            args.pack,
            Path(tmp),
            requests=args.requests,
            rounds=args.rounds,
            load=Load(args.load, args.concurrency, args.rate, args.seed),
            rtt_ms=args.rtt_ms,
            jitter_ms=args.jitter_ms,
            threshold=args.threshold,
            kill_cloud=not args.no_kill_cloud,
            seed=args.seed,
            show_progress=not args.no_progress,
            say=say,
        )
    written = write_outputs(report, phases, args.out, "hybrid")
    if args.json:
        print(json.dumps(report, indent=2))
        return
    print(format_report(report))
    print("\nwritten: " + ", ".join(written))


def _mib_limits(text: str) -> list[float]:
    try:
        limits = [float(v) for v in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected numbers like 0,16, got {text!r}") from None
    if not limits or any(v < 0 for v in limits):
        raise argparse.ArgumentTypeError(f"limits must be >= 0, got {text!r}")
    return limits


def _run_fetch(args: argparse.Namespace) -> None:
    from bench.fetch import bench_fetch

    r = bench_fetch(args.pack, args.limits, args.calls, args.rounds, args.chunk_size)
    print(f"cloud on {r['pack']}: median of {r['calls']} Generate calls, {r['rounds']} rounds")
    print(f"{'fetch_max_mib_s':>15} {'alone':>9} {'beside download':>16} {'slowdown':>9}")
    for row in r["rows"]:
        limit = "none" if row["fetch_max_mib_s"] == 0 else f"{row['fetch_max_mib_s']:g}"
        print(
            f"{limit:>15} {row['generate_p50_ms_alone']:>7.1f}ms "
            f"{row['generate_p50_ms_beside_download']:>14.1f}ms {row['slowdown']:>8.2f}x"
        )
    _write(args, "fetch", r)


def _run(args: argparse.Namespace) -> int:
    if args.bench == "hybrid":
        _run_hybrid(args)
        return 0
    if args.bench == "fetch":
        _run_fetch(args)
        return 0
    if args.bench in ("train", "all"):
        _run_train(args)
    if args.bench in ("cloud", "all"):
        _run_cloud(args)
    if args.bench in ("overload", "all"):
        _run_overload(args)
    if args.bench in ("edge", "all"):
        _run_edge(args)
    return 0
