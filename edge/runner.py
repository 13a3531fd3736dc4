"""The edge runner: an ONNX Runtime session over a decoder with KV-cache inputs and outputs.

Providers are asked for in the order TensorRT -> CUDA -> CPU, and the runner reports the ones the
session really got (``session.get_providers()``): onnxruntime-gpu lists CUDA as available on a
machine with no GPU and quietly falls back to the CPU when the session is made.

This module needs numpy and onnxruntime only (no torch): it is what runs on a device.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnxruntime as ort

from shared.pack import DecoderIO

log = logging.getLogger(__name__)

DEFAULT_PROVIDERS = ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")


class ContextLimitError(ValueError):
    """A prompt plus its answer would need positions the model was not trained for."""


@dataclass
class DecodeResult:
    token_ids: list[int]  # generated tokens, EOS excluded
    token_probs: list[float]  # probability of each chosen token, EOS included
    finished: str  # "eos", "length", or "low_confidence" (stopped early below the threshold)
    steps: int = 0  # forward passes run

    @property
    def confidence(self) -> float:
        """Lowest per-token probability (the router's confidence); 0 when nothing was decoded."""
        return min(self.token_probs) if self.token_probs else 0.0


@dataclass
class OnnxDecoder:
    """One loaded decoder session; thread-safe for concurrent ``generate`` calls."""

    path: Path
    n_layer: int
    n_head: int
    head_dim: int
    context_limit: int
    eos_id: int
    io: DecoderIO = field(default_factory=DecoderIO)
    providers: Sequence[str] = DEFAULT_PROVIDERS
    intra_op_threads: int = 0  # 0 = let ONNX Runtime choose
    trt_cache_dir: Path | None = None
    session: ort.InferenceSession = field(init=False)

    def __post_init__(self) -> None:
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = self.intra_op_threads
        opts.inter_op_num_threads = 1
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        available = set(ort.get_available_providers())
        wanted: list[str | tuple[str, dict[str, str]]] = []
        for p in self.providers:
            if p not in available:
                continue
            if p == "TensorrtExecutionProvider" and self.trt_cache_dir is not None:
                self.trt_cache_dir.mkdir(parents=True, exist_ok=True)
                wanted.append(
                    (
                        p,
                        {
                            "trt_engine_cache_enable": "True",
                            "trt_engine_cache_path": str(self.trt_cache_dir),
                        },
                    )
                )
            else:
                wanted.append(p)
        if not wanted:
            wanted = ["CPUExecutionProvider"]
        self.session = ort.InferenceSession(str(self.path), sess_options=opts, providers=wanted)
        log.info("loaded %s with providers %s", self.path.name, self.active_providers)

    @property
    def active_providers(self) -> list[str]:
        """The providers the session really runs on."""
        return list(self.session.get_providers())

    def empty_past(self, batch: int = 1) -> list[np.ndarray]:
        z = np.zeros((batch, self.n_head, 0, self.head_dim), dtype=np.float32)
        return [z] * (2 * self.n_layer)

    def forward(
        self,
        input_ids: np.ndarray,
        attention_mask: np.ndarray,
        position_ids: np.ndarray,
        past: list[np.ndarray],
    ) -> tuple[np.ndarray, list[np.ndarray]]:
        """One decoder call: logits [B, T, V] and the present cache (2 per layer)."""
        io = self.io
        feed = {
            io.input_ids: input_ids,
            io.attention_mask: attention_mask,
            io.position_ids: position_ids,
        }
        for i in range(self.n_layer):
            feed[io.past_key.format(i=i)] = past[2 * i]
            feed[io.past_value.format(i=i)] = past[2 * i + 1]
        out = self.session.run(None, feed)
        return out[0], list(out[1:])

    def check_fits(self, prompt_len: int, max_new_tokens: int) -> None:
        """Refuse before the model sees a position beyond its context limit."""
        if prompt_len + max_new_tokens > self.context_limit:
            raise ContextLimitError(
                f"prompt of {prompt_len} tokens + {max_new_tokens} new tokens exceeds the proxy's "
                f"context limit of {self.context_limit}"
            )

    def generate(
        self,
        prompt_ids: Sequence[int],
        max_new_tokens: int,
        stop_below: float | None = None,
    ) -> DecodeResult:
        """Greedy decoding with the KV cache; stops at EOS, at ``max_new_tokens``, or as soon as a
        token's probability falls below ``stop_below`` (the router's early exit)."""
        self.check_fits(len(prompt_ids), max_new_tokens)
        ids = np.asarray([prompt_ids], dtype=np.int64)
        mask = np.ones_like(ids)
        pos = np.arange(ids.shape[1], dtype=np.int64)[None]
        logits, past = self.forward(ids, mask, pos, self.empty_past())
        tokens: list[int] = []
        probs: list[float] = []
        steps = 1
        for _ in range(max_new_tokens):
            last = logits[0, -1].astype(np.float64)
            p = np.exp(last - last.max())
            p /= p.sum()
            tok = int(p.argmax())
            probs.append(float(p[tok]))
            if stop_below is not None and probs[-1] < stop_below:
                return DecodeResult(tokens, probs, "low_confidence", steps)
            if tok == self.eos_id:
                return DecodeResult(tokens, probs, "eos", steps)
            tokens.append(tok)
            if len(tokens) == max_new_tokens:
                break
            n = int(pos[0, -1]) + 1
            mask = np.ones((1, n + 1), dtype=np.int64)
            logits, past = self.forward(
                np.asarray([[tok]], dtype=np.int64), mask, np.asarray([[n]], dtype=np.int64), past
            )
            pos = np.asarray([[n]], dtype=np.int64)
            steps += 1
        return DecodeResult(tokens, probs, "length", steps)
