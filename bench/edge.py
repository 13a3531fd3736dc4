"""``autoglm bench edge``: the edge daemon's overhead, KV-cache decoding, and the int8 proxy.

Three measurements on one pack, each comparing two variants on the same inputs, interleaved round
by round (the order alternates each round) so that a noisy neighbour slows both alike:

1. **Daemon overhead.** The real daemon (``autoglm edge serve`` as a child process on loopback,
   edge-only, answer cache and MQTT off) answers test-split prompts over one gRPC channel kept
   open, like an app; the same prompts go through the same decoding loop called in this process
   (``load_proxy`` then ``decoder.generate``, prompt text in, answer text out). Both run ONNX
   Runtime with ``THREADS`` intra-op and inter-op threads. The daemon's own stage timings say
   where the difference goes: the wire (client latency minus the servicer's total), the servicer
   (its total minus the decode stage), and the executor hop (decode stage minus in-process);
   health checks on the same channel, in the same rounds, give the floor of any gRPC call, and
   the test prompt with the proxy's longest answer shows the same overhead on a longer decode.
2. **KV cache against recomputing the whole sequence** for exactly 64 new tokens: a decoder of the
   proxy's architecture with a longer context (random weights, exported with the toolkit's
   ONNX exporter, so this part needs torch), then the pack's real proxy at its own context.
3. **int8 against fp32 proxy**: latency on the same prompts and greedy agreement.

Nothing here asserts a time: it measures and reports. Every call goes to 127.0.0.1.
"""

from __future__ import annotations

import random
import re
import statistics
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import onnxruntime as ort
from grpc_health.v1 import health_pb2, health_pb2_grpc

from bench.stack.processes import EdgeServer
from bench.stats import percentile
from edge.runner import OnnxDecoder
from shared.pack.manifest import Manifest, open_pack
from shared.rpc import inference_pb2 as pb
from shared.rpc import inference_pb2_grpc
from shared.sampling import SamplingParams
from shared.settings.edge import OnnxSettings
from shared.tokenizer import ByteTokenizer

# ONNX Runtime threads in the daemon and in this process alike: the proxy is far too small for
# intra-op parallelism to pay, and one thread per session keeps the 2-core VM's second core free
# for the other side of each comparison (the gRPC client, or the daemon's event loop).
THREADS = 1
KV_NEW_TOKENS = 64
KV_CONTEXT = 128  # block_size of the random-weight decoder of the proxy's architecture
KV_SEEDS = 20  # weight seeds tried until greedy decoding runs 64 tokens without EOS

_CONFIG = f"""\
[onnx]
intra_op_threads = {THREADS}
inter_op_threads = {THREADS}

[mqtt]
enabled = false

[runtime.cache]
enabled = false
"""

TOK = ByteTokenizer()


def _ms(xs: Sequence[float]) -> dict[str, float]:
    return {"p50_ms": 1000 * percentile(xs, 50), "p95_ms": 1000 * percentile(xs, 95)}


def _greedy(max_new: int) -> SamplingParams:
    return SamplingParams(max_new_tokens=max_new)


def bench_prompts(manifest: Manifest, n: int) -> list[str]:
    """``n`` test-split prompts of the pack's own suite, shuffled with a fixed seed so that any
    slice mixes families and tiers (repeated when the split is smaller than ``n``)."""
    from toolkit.evaluate import pack_examples  # the toolkit's task suite (pulls in torch)

    prompts = [e.prompt for e in pack_examples(manifest, "test")]
    random.Random(0).shuffle(prompts)
    return [prompts[i % len(prompts)] for i in range(n)]


def longest_answer(pack: Path, manifest: Manifest) -> tuple[str, int]:
    """The test prompt on which the pack's proxy writes its longest greedy answer when allowed
    up to its whole context, and that ``max_new_tokens`` (context limit - prompt tokens)."""
    from toolkit.evaluate import pack_examples, proxy_decoder

    proxy = proxy_decoder(pack, manifest, threads=THREADS)
    limit = proxy.context_limit
    best, best_n = "", -1
    for p in (e.prompt for e in pack_examples(manifest, "test")):
        ids = TOK.encode(p)
        if len(ids) < limit:
            n = len(proxy.generate(ids, limit - len(ids)).token_ids)
            if n > best_n:
                best, best_n = p, n
    return best, limit - len(TOK.encode(best))


def _rounds(prompts: list[str], rounds: int) -> list[list[str]]:
    per = len(prompts) // rounds
    return [prompts[r * per : (r + 1) * per] for r in range(rounds)]


def _interleaved(
    rounds: int, variants: dict[str, Callable[[int], list[float]]]
) -> dict[str, list[float]]:
    """Run each variant once per round, the order reversed every other round; all samples."""
    samples: dict[str, list[float]] = {name: [] for name in variants}
    names = list(variants)
    for r in range(rounds):
        for name in names if r % 2 == 0 else names[::-1]:
            samples[name] += variants[name](r)
    return samples


# ---------------------------------------------------------------------------------------------
# 1. Daemon overhead


class _Workload:
    """One set of requests sent both ways: prompts per round and their ``max_new_tokens``."""

    def __init__(self, per_round: list[list[str]], max_new: int) -> None:
        self.per_round = per_round
        self.max_new = max_new
        self.routes: Counter[str] = Counter()
        self.stages: dict[str, list[float]] = {"total": [], "edge": []}
        self.daemon_answers: dict[str, list[int]] = {}
        self.local_answers: dict[str, list[int]] = {}

    def report(self, daemon: list[float], local: list[float]) -> dict[str, Any]:
        if set(self.routes) != {"ROUTE_EDGE"}:
            raise RuntimeError(f"expected every answer from the proxy, got {dict(self.routes)}")
        med = statistics.median
        n = len(self.per_round[0])
        same = sum(self.daemon_answers[k] == v for k, v in self.local_answers.items())
        total, edge = med(self.stages["total"]), med(self.stages["edge"])
        return {
            "max_new_tokens": self.max_new,
            "requests_per_variant": len(daemon),
            "routes": dict(self.routes),
            "answers_identical": same / max(1, len(self.local_answers)),
            "daemon": _ms(daemon),
            "in_process": _ms(local),
            "p50_ratio": med(daemon) / med(local),
            "p50_ratio_per_round": [
                med(daemon[i * n : (i + 1) * n]) / med(local[i * n : (i + 1) * n])
                for i in range(len(self.per_round))
            ],
            "daemon_stages_p50_ms": {"total": 1000 * total, "edge": 1000 * edge},
            "overhead_p50_ms": {  # differences of medians: where the daemon's extra time goes
                "total": 1000 * (med(daemon) - med(local)),
                "grpc_and_wire": 1000 * (med(daemon) - total),  # client - servicer's total
                "servicer": 1000 * (total - edge),  # servicer's total - its decode stage
                "executor_hop": 1000 * (edge - med(local)),  # decode stage - in process
            },
        }


def bench_daemon(
    pack: Path, manifest: Manifest, prompts: list[str], rounds: int, long_answer: tuple[str, int]
) -> dict[str, Any]:
    """The daemon's gRPC answers against the same decoding in process (see the module doc).

    Two workloads, both interleaved in the same rounds: the test prompts at the pack's
    ``max_new_tokens`` (the headline), and a few repeats of the test prompt on which the proxy
    writes its longest answer, which shows the same overhead on a longer decode."""
    from edge.proxy import load_proxy

    per_round = _rounds(prompts, rounds)
    long_prompt, long_new = long_answer
    workloads = {
        "": _Workload(per_round, manifest.routing.max_new_tokens),
        "long_": _Workload([[long_prompt] * max(1, len(r) // 5) for r in per_round], long_new),
    }
    with tempfile.TemporaryDirectory(prefix="autoglm-bench-edge-") as tmp:
        work = Path(tmp)
        config = work / "edge.toml"
        config.write_text(_CONFIG)
        server = EdgeServer(
            pack, work, args=["--config", str(config), "--mode", "edge_only"]
        ).wait_serving()
        try:
            onnx = OnnxSettings(intra_op_threads=THREADS, inter_op_threads=THREADS)
            proxy = load_proxy(pack, onnx, work / "in-process-state")
            with grpc.insecure_channel(server.address) as channel:  # one channel, like an app
                stub = inference_pb2_grpc.InferenceStub(channel)
                health = health_pb2_grpc.HealthStub(channel)

                def ask(prompt: str, max_new: int) -> tuple[float, pb.GenerateResponse]:
                    req = pb.GenerateRequest(
                        prompt=prompt,
                        sampling=pb.SamplingParams(max_new_tokens=max_new),
                        route=pb.ROUTE_PREFERENCE_EDGE_ONLY,
                    )
                    t0 = time.perf_counter()
                    reply: pb.GenerateResponse = stub.Generate(req, timeout=30)
                    return time.perf_counter() - t0, reply

                def local(prompt: str, max_new: int) -> tuple[float, list[int]]:
                    t0 = time.perf_counter()  # text in, text out, as the daemon does
                    ids = proxy.tokenizer.encode(prompt)
                    r = proxy.decoder.generate(
                        ids, max_new, params=_greedy(max_new), stop_below=None
                    )
                    proxy.tokenizer.decode(r.token_ids)
                    return time.perf_counter() - t0, r.token_ids

                def via_daemon(w: _Workload) -> Callable[[int], list[float]]:
                    def run(r: int) -> list[float]:
                        out = []
                        for p in w.per_round[r]:
                            dt, reply = ask(p, w.max_new)
                            out.append(dt)
                            w.routes[pb.Route.Name(reply.route)] += 1
                            w.daemon_answers[p] = list(reply.token_ids)
                            for s in reply.timings:
                                if s.stage in w.stages:
                                    w.stages[s.stage].append(s.ms / 1000)
                        return out

                    return run

                def in_process(w: _Workload) -> Callable[[int], list[float]]:
                    def run(r: int) -> list[float]:
                        out = []
                        for p in w.per_round[r]:
                            dt, ids = local(p, w.max_new)
                            out.append(dt)
                            w.local_answers[p] = ids
                        return out

                    return run

                def health_check(r: int) -> list[float]:
                    out = []
                    for _ in per_round[r]:
                        t0 = time.perf_counter()
                        health.Check(health_pb2.HealthCheckRequest(), timeout=30)
                        out.append(time.perf_counter() - t0)
                    return out

                for p in prompts[:5]:  # warm-up: the channel's connection, first ORT runs
                    ask(p, workloads[""].max_new)
                    local(p, workloads[""].max_new)
                variants: dict[str, Callable[[int], list[float]]] = {"health": health_check}
                for key, w in workloads.items():
                    variants[f"{key}daemon"] = via_daemon(w)
                    variants[f"{key}in_process"] = in_process(w)
                samples = _interleaved(rounds, variants)
            providers = proxy.decoder.active_providers
            daemon_providers = _logged_providers(server.log())
        finally:
            server.stop()
    result = workloads[""].report(samples["daemon"], samples["in_process"])
    long = workloads["long_"].report(samples["long_daemon"], samples["long_in_process"])
    return {
        **result,
        "target_p50_ratio": 1.15,
        # The cheapest call there is, on the same channel, same rounds: gRPC's and Python's floor.
        "health_check": _ms(samples["health"]),
        "long_answer": {"prompt": long_prompt, **long},
        "providers": {"in_process": providers, "daemon": daemon_providers},
    }


def _logged_providers(log_text: str) -> list[str] | None:
    """The providers the daemon logged at start ("proxy NAME (PRECISION) on P1, P2")."""
    m = re.search(r"proxy \S+ \(\w+\) on ([\w, ]+)", log_text)
    return [s.strip() for s in m.group(1).split(",")] if m else None


# ---------------------------------------------------------------------------------------------
# 2. KV cache against full recomputation


def _random_decoder(manifest: Manifest, work: Path, seed: int) -> OnnxDecoder:
    """A decoder of the proxy's architecture with a ``KV_CONTEXT`` context and random weights."""
    import torch

    from cloud.model.gpt import GPT, GPTConfig
    from toolkit.export import export_onnx

    cfg = GPTConfig(**{**manifest.proxy.config, "block_size": KV_CONTEXT})
    torch.manual_seed(seed)
    path = work / f"random-{seed}.onnx"
    export_onnx(GPT(cfg), path)
    return OnnxDecoder(
        path=path,
        n_layer=cfg.n_layer,
        n_head=cfg.n_head,
        head_dim=cfg.n_embd // cfg.n_head,
        context_limit=KV_CONTEXT,
        eos_id=TOK.eos_id,
        intra_op_threads=THREADS,
        inter_op_threads=THREADS,
    )


def _long_prompt(prompts: list[str], n_tokens: int) -> str:
    """Test prompts joined by spaces, cut so that it encodes to exactly ``n_tokens`` (BOS too)."""
    text = " ".join(prompts)
    while len(TOK.encode(text)) < n_tokens:
        text = f"{text} {text}"
    text = text[: n_tokens - 1]
    while len(TOK.encode(text)) > n_tokens:
        text = text[:-1]
    return text


def _whole(seq: Sequence[int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """input_ids, attention_mask and position_ids of a whole sequence from position 0."""
    ids = np.asarray([seq], dtype=np.int64)
    return ids, np.ones_like(ids), np.arange(ids.shape[1], dtype=np.int64)[None]


def _time_kv_row(
    label: str, decoder: OnnxDecoder, prompt: str, max_new: int, rounds: int, reps: int
) -> dict[str, Any]:
    ids = TOK.encode(prompt)
    ref = decoder.generate(ids, max_new, stop_below=None)
    full = decoder.generate(ids, max_new, stop_below=None, use_cache=False)

    def variant(use_cache: bool) -> Callable[[int], list[float]]:
        def run(_r: int) -> list[float]:
            out = []
            for _ in range(reps):
                t0 = time.perf_counter()
                decoder.generate(ids, max_new, stop_below=None, use_cache=use_cache)
                out.append(time.perf_counter() - t0)
            return out

        return run

    # One decoder call at the last step, each way: the new token against a cache of all the
    # others, and the whole sequence from scratch. Their ratio says how much of a call is fixed
    # cost (ONNX Runtime's per-call and per-kernel overhead) rather than work per position.
    seq = [*ids, *ref.token_ids[:-1]]
    n = len(seq) - 1
    _, past = decoder.forward(*_whole(seq[:-1]), decoder.empty_past())
    one = (
        np.asarray([[seq[-1]]], dtype=np.int64),
        np.ones((1, n + 1), dtype=np.int64),
        np.asarray([[n]], dtype=np.int64),
    )

    def call(whole: bool) -> Callable[[int], list[float]]:
        def run(_r: int) -> list[float]:
            out = []
            for _ in range(reps):
                t0 = time.perf_counter()
                if whole:
                    decoder.forward(*_whole(seq), decoder.empty_past())
                else:
                    decoder.forward(*one, past)
                out.append(time.perf_counter() - t0)
            return out

        return run

    # The decode's decoder calls alone, back to back, each way: the same inputs as the decode
    # above (prefill then one token at a time against the cache; or each whole sequence), with
    # no token picking and no Python loop between them. Their ratio is the most that cheaper
    # per-step Python could give the speed-up.
    toks, p = [*ids, *ref.token_ids[: ref.steps - 1]], len(ids)  # every token the decode fed
    kv_calls = [(*_whole(ids), decoder.empty_past())]
    _, past_n = decoder.forward(*kv_calls[0])
    for n in range(p, len(toks)):
        kv_calls.append(
            (
                np.asarray([[toks[n]]], dtype=np.int64),
                np.ones((1, n + 1), dtype=np.int64),
                np.asarray([[n]], dtype=np.int64),
                past_n,
            )
        )
        _, past_n = decoder.forward(*kv_calls[-1])
    full_calls = [(*_whole(toks[:n]), decoder.empty_past()) for n in range(p, len(toks) + 1)]

    def calls_only(calls: list[Any]) -> Callable[[int], list[float]]:
        def run(_r: int) -> list[float]:
            out = []
            for _ in range(reps):
                t0 = time.perf_counter()
                for c in calls:
                    decoder.forward(*c)
                out.append(time.perf_counter() - t0)
            return out

        return run

    for use_cache in (True, False):  # warm-up
        variant(use_cache)(0)
    s = _interleaved(
        rounds,
        {
            "cache": variant(True),
            "recompute": variant(False),
            "step_one": call(False),
            "step_all": call(True),
            "calls_cache": calls_only(kv_calls),
            "calls_recompute": calls_only(full_calls),
        },
    )
    cached, recompute = statistics.median(s["cache"]), statistics.median(s["recompute"])
    step_one, step_all = statistics.median(s["step_one"]), statistics.median(s["step_all"])
    calls_cache = statistics.median(s["calls_cache"])
    calls_recompute = statistics.median(s["calls_recompute"])
    return {
        "row": label,
        "context_limit": decoder.context_limit,
        "prompt": prompt,
        "prompt_tokens": len(ids),
        "new_tokens": len(ref.token_ids),
        "finished": ref.finished,
        "same_tokens_without_cache": full.token_ids == ref.token_ids,
        "requests_per_variant": len(s["cache"]),
        "kv_cache_ms": 1000 * cached,
        "recompute_ms": 1000 * recompute,
        "speedup": recompute / cached,
        "decoder_calls_only": {  # the same calls with nothing between them (see above)
            "calls_per_decode": len(kv_calls),
            "kv_cache_ms": 1000 * calls_cache,
            "recompute_ms": 1000 * calls_recompute,
            "speedup": calls_recompute / calls_cache,
        },
        "last_step": {  # the decoder call that makes the last token, each way
            "sequence_tokens": len(seq),
            "one_token_with_cache_ms": 1000 * step_one,
            "whole_sequence_ms": 1000 * step_all,
        },
        "providers": decoder.active_providers,
    }


def bench_kv_cache(
    pack: Path,
    manifest: Manifest,
    prompts: list[str],
    rounds: int,
    reps: int,
    long_answer: tuple[str, int],
) -> dict[str, Any]:
    """Median ms per request with the KV cache and with full recomputation (see the module doc)."""
    from toolkit.evaluate import proxy_decoder

    short = prompts[0]
    long = _long_prompt(prompts, KV_CONTEXT - KV_NEW_TOKENS)
    rows = []
    with tempfile.TemporaryDirectory(prefix="autoglm-bench-kv-") as tmp:
        for seed in range(KV_SEEDS):  # greedy on random weights: find weights with no early EOS
            decoder = _random_decoder(manifest, Path(tmp), seed)
            runs = [decoder.generate(TOK.encode(p), KV_NEW_TOKENS) for p in (short, long)]
            if all(len(r.token_ids) == KV_NEW_TOKENS for r in runs):
                break
        else:
            raise RuntimeError(f"every one of {KV_SEEDS} random decoders stopped before 64 tokens")
        arch = (
            f"proxy architecture ({manifest.proxy.n_layer} layers, {manifest.proxy.n_head} heads, "
            f"width {manifest.proxy.config.get('n_embd')}), random weights (seed {seed}), "
            f"context {KV_CONTEXT}"
        )
        for label, prompt in (("task prompt", short), ("long prompt", long)):
            rows.append(
                _time_kv_row(f"{arch}: {label}", decoder, prompt, KV_NEW_TOKENS, rounds, reps)
            )
    # The trained proxy at its own context (it stops at EOS on almost every prompt, well before
    # 64 tokens): the test prompt on which it writes its longest answer.
    long_prompt, long_new = long_answer
    rows.append(
        _time_kv_row(
            f"demo pack's trained proxy, its own context {manifest.proxy.context_limit}: the test "
            "prompt with the longest greedy answer, prompt + new tokens up to the context",
            proxy_decoder(pack, manifest, threads=THREADS),
            long_prompt,
            long_new,
            rounds,
            reps,
        )
    )
    return {"new_tokens_target": KV_NEW_TOKENS, "target_speedup": 2.5, "rows": rows}


# ---------------------------------------------------------------------------------------------
# 3. int8 against fp32


def bench_int8(pack: Path, manifest: Manifest, prompts: list[str], rounds: int) -> dict[str, Any]:
    """Per-request latency of both proxy variants on the same prompts, and their agreement."""
    from toolkit.evaluate import proxy_decoder

    if manifest.proxy.onnx_int8 is None:
        return {"skipped": f"pack {manifest.name}/{manifest.version} has no int8 proxy"}
    max_new = manifest.routing.max_new_tokens
    decoders = {
        "fp32": proxy_decoder(pack, manifest, threads=THREADS),
        "int8": proxy_decoder(pack, manifest, int8=True, threads=THREADS),
    }
    per_round = _rounds(prompts, rounds)
    answers: dict[str, dict[str, list[int]]] = {"fp32": {}, "int8": {}}

    def variant(name: str) -> Callable[[int], list[float]]:
        dec = decoders[name]

        def run(r: int) -> list[float]:
            out = []
            for p in per_round[r]:
                t0 = time.perf_counter()
                ids = TOK.encode(p)
                res = dec.generate(ids, max_new, stop_below=None)
                TOK.decode(res.token_ids)
                out.append(time.perf_counter() - t0)
                answers[name][p] = res.token_ids
            return out

        return run

    for p in prompts[:5]:  # warm-up
        for dec in decoders.values():
            dec.generate(TOK.encode(p), max_new)
    s = _interleaved(rounds, {"fp32": variant("fp32"), "int8": variant("int8")})
    same_tokens = total = same_answers = 0
    for p, a in answers["fp32"].items():
        b = answers["int8"][p]
        total += max(len(a), len(b))
        same_tokens += sum(x == y for x, y in zip(a, b, strict=False))
        same_answers += a == b
    fp32, int8 = statistics.median(s["fp32"]), statistics.median(s["int8"])
    return {
        "max_new_tokens": max_new,
        "prompts": len(answers["fp32"]),
        "requests_per_variant": len(s["fp32"]),
        "fp32": _ms(s["fp32"]),
        "int8": _ms(s["int8"]),
        "int8_speedup": fp32 / int8,
        "token_agreement": same_tokens / max(1, total),
        "answer_agreement": same_answers / max(1, len(answers["fp32"])),
        "pack_recorded_token_agreement": manifest.proxy.int8_agreement,
        "providers": {k: d.active_providers for k, d in decoders.items()},
    }


# ---------------------------------------------------------------------------------------------


def bench_edge(pack: Path, rounds: int, requests: int) -> dict[str, Any]:
    """All three measurements; ``requests`` per variant and round."""
    if rounds < 1 or requests < 1:
        raise ValueError("rounds and requests must be at least 1")
    pack = Path(pack).resolve()
    manifest = open_pack(pack)
    prompts = bench_prompts(manifest, rounds * requests)
    long = longest_answer(pack, manifest)
    return {
        "bench": "edge",
        "pack": f"{manifest.name}/{manifest.version}",
        "rounds": rounds,
        "requests_per_round": requests,
        "onnx_threads": {"intra_op": THREADS, "inter_op": THREADS},
        "onnxruntime": ort.__version__,
        "available_providers": ort.get_available_providers(),
        "daemon_overhead": bench_daemon(pack, manifest, prompts, rounds, long),
        "kv_cache": bench_kv_cache(pack, manifest, prompts, rounds, max(1, requests // 5), long),
        "int8": bench_int8(pack, manifest, prompts, rounds),
    }
