"""``autoglm bench cloud``: the engine on a pack's full model, with and without batching.

Closed loop: ``streams`` clients each send their next request as soon as the previous one is
answered, over the task suite's test prompts, until every stream has had ``per_stream`` answers.
Both engine modes (continuous batching on, and off = one sequence at a time) run the same
workload in the same process, alternating by concurrency level so that machine noise hits both.

Also measured: decode steps saved by the edge proxy's drafts on the requests the router would
escalate (the proxy's greedy tokens until its confidence falls below the pack's threshold).
"""

from __future__ import annotations

import statistics
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from bench.stats import percentile
from cloud.engine.core import EngineCore
from cloud.engine.request import SamplingParams
from cloud.model import weights
from cloud.model.gpt import GPT
from shared.pack.manifest import Manifest, open_pack
from shared.settings.cloud import EngineSettings
from shared.tokenizer import ByteTokenizer
from toolkit.evaluate import pack_examples, proxy_decoder

TOK = ByteTokenizer()


def run_closed_loop(
    model: GPT, prompts: list[str], streams: int, per_stream: int, batching: bool, max_new: int
) -> dict[str, Any]:
    """Serve ``streams`` x ``per_stream`` requests; tokens/s, TTFT and inter-token latency."""
    core = EngineCore(
        model,
        TOK,
        EngineSettings(max_batch_size=max(streams, 1), max_waiting=4 * streams, batching=batching),
    )
    params = SamplingParams(max_new_tokens=max_new)
    next_prompt = iter(prompts * (1 + streams * per_stream // max(1, len(prompts))))
    left = dict.fromkeys(range(streams), per_stream)
    last_token_at: dict[str, float] = {}
    ttft, itl, tokens = [], [], 0
    owner: dict[str, int] = {}  # request id -> stream
    submitted: dict[str, float] = {}

    def submit(stream: int) -> None:
        rid = f"r{len(submitted)}"
        owner[rid] = stream
        submitted[rid] = time.perf_counter()
        core.add_request(rid, next(next_prompt), params)

    t0 = time.perf_counter()
    for s in range(streams):
        submit(s)
    while core.has_work():
        for ev in core.step():
            now = time.perf_counter()
            if ev.token_ids:
                tokens += len(ev.token_ids)
                prev = last_token_at.get(ev.request_id)
                if prev is None:
                    ttft.append(now - submitted[ev.request_id])
                else:
                    itl.extend([(now - prev) / len(ev.token_ids)] * len(ev.token_ids))
                last_token_at[ev.request_id] = now
            if ev.finished:
                s = owner.pop(ev.request_id)
                left[s] -= 1
                if left[s] > 0:
                    submit(s)
    elapsed = time.perf_counter() - t0
    return {
        "streams": streams,
        "batching": batching,
        "requests": streams * per_stream,
        "output_tokens": tokens,
        "seconds": elapsed,
        "tokens_per_s": tokens / elapsed,
        "ttft_p50_ms": 1000 * percentile(ttft, 50),
        "ttft_p99_ms": 1000 * percentile(ttft, 99),
        "itl_p50_ms": 1000 * percentile(itl, 50),
        "itl_p99_ms": 1000 * percentile(itl, 99),
        "steps": core.num_steps,
    }


def draft_savings(pack: Path, manifest: Manifest, model: GPT, per_cell: int) -> dict[str, Any]:
    """Decode steps the full model saves on the requests the router escalates."""
    examples = pack_examples(manifest, "test", per_cell)
    proxy = proxy_decoder(pack, manifest)
    threshold, max_new = manifest.routing.default_threshold, manifest.routing.max_new_tokens
    steps_with: list[int] = []
    steps_without: list[int] = []
    accepted: list[int] = []
    escalated = 0
    for ex in examples:
        d = proxy.generate(TOK.encode(ex.prompt), max_new, stop_below=threshold)
        if d.finished != "low_confidence":
            continue
        escalated += 1
        for draft, sink in ((d.token_ids, steps_with), ([], steps_without)):
            core = EngineCore(model, TOK, EngineSettings(max_batch_size=1))
            req = core.add_request("r", ex.prompt, SamplingParams(max_new), draft_ids=draft)
            while core.has_work():
                core.step()
            sink.append(core.num_steps)
            if sink is steps_with:
                accepted.append(req.draft_accepted)  # 0 when the proxy stopped at its first token
    saved = [a - b for a, b in zip(steps_without, steps_with, strict=True)]
    return {
        "escalated_requests": escalated,
        "of_requests": len(examples),
        "draft_tokens_accepted_mean": statistics.fmean(accepted) if accepted else 0.0,
        "decode_steps_without_draft_mean": statistics.fmean(steps_without) if saved else 0.0,
        "decode_steps_saved_mean": statistics.fmean(saved) if saved else 0.0,
        "requests_with_steps_saved": sum(s > 0 for s in saved),
    }


def bench_cloud(
    pack: Path, levels: list[int], per_stream: int, per_cell: int, rounds: int = 3
) -> dict[str, Any]:
    """Every level ``rounds`` times in each mode, interleaved; each row is the median round."""
    manifest = open_pack(pack)
    model = weights.load(pack / manifest.full.weights, manifest.full.config)
    prompts = [e.prompt for e in pack_examples(manifest, "test", per_cell)]
    np.random.default_rng(0).shuffle(prompts)
    max_new = manifest.routing.max_new_tokens
    runs: dict[tuple[int, bool], list[dict[str, Any]]] = defaultdict(list)
    run_closed_loop(model, prompts, 2, 2, True, max_new)  # warm-up
    for _ in range(rounds):
        for streams in levels:
            for batching in (True, False):
                runs[streams, batching].append(
                    run_closed_loop(model, prompts, streams, per_stream, batching, max_new)
                )
    rows: dict[int, dict[bool, dict[str, Any]]] = defaultdict(dict)
    for (streams, batching), results in runs.items():
        ranked = sorted(results, key=lambda x: x["tokens_per_s"])
        rows[streams][batching] = {**ranked[len(ranked) // 2], "rounds": len(ranked)}
    return {
        "bench": "cloud",
        "pack": f"{manifest.name}/{manifest.version}",
        "rows": [rows[s][b] for s in levels for b in (True, False)],
        "speedup": {
            str(s): rows[s][True]["tokens_per_s"] / rows[s][False]["tokens_per_s"] for s in levels
        },
        "drafts": draft_savings(pack, manifest, model, per_cell),
    }
