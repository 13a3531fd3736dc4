"""``autoglm bench train``: training-step time of the demo recipe, fp32 against bf16 autocast.

Both variants run the same batches on the same model shapes, interleaved round by round so that
a noisy neighbour slows both alike; the table reports medians and their ratio.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path
from typing import Any


def register(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="bench", required=True, metavar="BENCH")
    for name, help_text in (
        ("train", "training and distillation step time, fp32 vs bf16 autocast"),
        ("cloud", "engine tokens/s, TTFT, inter-token latency with and without batching; drafts"),
        (
            "overload",
            "the real server flooded with 10x its queue bound: time to RESOURCE_EXHAUSTED",
        ),
        ("all", "every benchmark above"),
    ):
        b = sub.add_parser(name, help=help_text)
        b.add_argument("--out", type=Path, default=Path("runs/bench"), help="folder for the JSON")
        b.set_defaults(handler=_run)
        if name in ("train", "all"):
            b.add_argument(
                "--steps", type=int, default=20, help="train: steps per variant and round"
            )
        if name in ("train", "cloud", "all"):
            b.add_argument("--rounds", type=int, default=3, help="interleaved rounds (medians)")
        if name in ("cloud", "overload", "all"):
            b.add_argument("--pack", type=Path, default=Path("packs/demo/latest"), help="pack")
        if name in ("overload", "all"):
            b.add_argument("--queue-bound", type=int, default=16, help="overload: max_waiting")
            b.add_argument("--factor", type=int, default=10, help="overload: requests per bound")
            b.add_argument("--max-batch", type=int, default=4, help="overload: max_batch_size")
        if name in ("cloud", "all"):
            b.add_argument("--levels", default="1,4,16,32", help="cloud: concurrent streams")
            b.add_argument("--per-stream", type=int, default=16, help="cloud: requests per stream")
            b.add_argument(
                "--per-cell", type=int, default=10, help="cloud: prompts per family/tier"
            )


def _step_times(
    student: Any, teacher: Any, batches: list[Any], cfg: Any, bf16: bool
) -> list[float]:
    import torch

    from cloud.toolkit.train import _loss

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

    from cloud.toolkit import tasks
    from cloud.toolkit.build import RECIPES
    from cloud.toolkit.model import GPT
    from cloud.toolkit.train import task_batches
    from shared.tokenizer import ByteTokenizer

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
    from cloud.engine.bench import bench_cloud

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
    from cloud.service.bench import bench_overload

    r = bench_overload(args.pack, args.queue_bound, args.factor, args.max_batch)
    print(
        f"server on {r['pack']}: queue bound {r['queue_bound']}, max batch {r['max_batch_size']};"
        f" 3 floods of {args.factor}x the bound at once"
    )
    print(
        f"  {r['requests']} requests: {r['ok']} answered, {r['resource_exhausted']} "
        f"RESOURCE_EXHAUSTED, other errors: {r['other_errors'] or 'none'}"
    )
    if r["exhausted_p99_ms"] is not None:
        print(
            f"  time to RESOURCE_EXHAUSTED: p50 {r['exhausted_p50_ms']:.1f} ms, "
            f"p99 {r['exhausted_p99_ms']:.1f} ms"
        )
    print(
        f"  the same bursts of health checks (the floor): p50 {r['health_burst_p50_ms']:.1f} ms, "
        f"p99 {r['health_burst_p99_ms']:.1f} ms"
    )
    rss = f"{r['rss_before_mb']:.0f} MB before, {r['rss_after_mb']:.0f} MB after"
    print(f"  server memory (RSS): {rss}")
    _write(args, "overload", r)


def _run(args: argparse.Namespace) -> int:
    if args.bench in ("train", "all"):
        _run_train(args)
    if args.bench in ("cloud", "all"):
        _run_cloud(args)
    if args.bench in ("overload", "all"):
        _run_overload(args)
    return 0
