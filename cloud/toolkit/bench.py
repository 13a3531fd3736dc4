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
        ("all", "every benchmark above"),
    ):
        b = sub.add_parser(name, help=help_text)
        b.add_argument("--steps", type=int, default=20, help="measured steps per variant and round")
        b.add_argument("--rounds", type=int, default=3, help="interleaved rounds")
        b.add_argument("--out", type=Path, default=Path("runs/bench"), help="folder for the JSON")
        b.set_defaults(handler=_run)


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


def _run(args: argparse.Namespace) -> int:
    result = bench_train(args.steps, args.rounds)
    result["machine"] = {
        "cpu": platform.processor() or platform.machine(),
        "python": platform.python_version(),
    }
    print(f"{'job':<20} {'batch':>5} {'fp32 ms':>9} {'bf16 ms':>9} {'speed-up':>9}")
    for r in result["rows"]:
        print(
            f"{r['job']:<20} {r['batch_size']:>5} {r['fp32_ms']:>9.1f} {r['bf16_ms']:>9.1f} "
            f"{r['speedup']:>8.2f}x"
        )
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / "train.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(f"\nmedians over {args.rounds} x {args.steps} steps per variant; JSON: {path}")
    return 0
