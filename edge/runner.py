"""The edge runner: an ONNX Runtime session over a decoder with KV-cache inputs and outputs.

Providers are asked for in the order TensorRT -> CUDA -> CPU, and the runner reports the ones the
session really got (``session.get_providers()``): onnxruntime-gpu lists CUDA as available on a
machine with no GPU and quietly falls back to the CPU when the session is made.

This module needs numpy and onnxruntime only (no torch): it is what runs on a device.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from shared.pack.manifest import DecoderIO, Manifest
from shared.sampling import SamplingParams, pick_token

log = logging.getLogger(__name__)

DEFAULT_PROVIDERS = ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")


@dataclass
class DecodeResult:
    token_ids: list[int]  # generated tokens, EOS excluded
    token_probs: list[float]  # probability of each chosen token, EOS included
    finished: str  # "eos", "length", "stop" (a stop string), or "low_confidence" (early exit)
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
    inter_op_threads: int = 1  # operators run one after another in a decoder step
    trt_cache_dir: Path | None = None
    session: ort.InferenceSession = field(init=False)

    def __post_init__(self) -> None:
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = self.intra_op_threads
        opts.inter_op_num_threads = self.inter_op_threads
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
        # What every call reuses, built once: the I/O names in the order of ``past`` and of the
        # outputs, and read-only arrays that each step slices (views, no allocation): an
        # attention mask of ones and the positions 0 .. context_limit - 1.
        io = self.io
        layers = range(self.n_layer)
        self._past_names = [f.format(i=i) for i in layers for f in (io.past_key, io.past_value)]
        self._out_names = [
            io.logits,
            *(f.format(i=i) for i in layers for f in (io.present_key, io.present_value)),
        ]
        self._ones = _frozen(np.ones((1, self.context_limit), dtype=np.int64))
        self._positions = _frozen(np.arange(self.context_limit, dtype=np.int64)[None])
        self._no_past = self.empty_past()  # zero-length: nothing in it to write

    @classmethod
    def from_pack(
        cls, pack_dir: Path, manifest: Manifest, eos_id: int, *, int8: bool = False, **kw: Any
    ) -> OnnxDecoder:
        """The pack's proxy (fp32, or its int8 variant); ``kw`` as the dataclass fields."""
        p = manifest.proxy
        name = p.onnx_int8 if int8 else p.onnx
        if name is None:
            raise ValueError(f"pack {manifest.name}/{manifest.version} has no int8 proxy")
        return cls(
            path=pack_dir / name,
            n_layer=p.n_layer,
            n_head=p.n_head,
            head_dim=p.head_dim,
            context_limit=p.context_limit,
            eos_id=eos_id,
            io=p.io,
            **kw,
        )

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
        out = self._run(self._out_names, input_ids, attention_mask, position_ids, past)
        return out[0], out[1:]

    def _run(
        self,
        outputs: list[str],
        input_ids: np.ndarray,
        attention_mask: np.ndarray,
        position_ids: np.ndarray,
        past: Sequence[np.ndarray],
    ) -> list[np.ndarray]:
        """One decoder call asking for ``outputs`` only (names, in that order)."""
        io = self.io
        feed = dict(zip(self._past_names, past, strict=True))
        feed[io.input_ids] = input_ids
        feed[io.attention_mask] = attention_mask
        feed[io.position_ids] = position_ids
        out: list[np.ndarray] = self.session.run(outputs, feed)
        return out

    def generate(
        self,
        prompt_ids: Sequence[int],
        max_new_tokens: int,
        *,
        params: SamplingParams | None = None,
        stop_below: float | None = None,
        should_stop: Callable[[list[int]], bool] | None = None,
        use_cache: bool = True,
    ) -> DecodeResult:
        """Decode up to ``max_new_tokens`` tokens after the prompt.

        Stops at EOS, at ``max_new_tokens``, when ``should_stop(tokens)`` says so (stop strings),
        or as soon as a token's probability falls below ``stop_below`` (the router's early exit:
        no edge time is spent on an answer that will be escalated). ``use_cache=False`` recomputes
        the whole sequence at every step (the baseline of the KV-cache benchmark). The caller
        keeps prompt + ``max_new_tokens`` within ``context_limit``: for requests, that is the one
        check of :func:`edge.router.plan`.
        """
        params = params or SamplingParams()
        if max_new_tokens <= 0:
            return DecodeResult([], [], "length", 0)
        rng = np.random.default_rng(params.seed)
        # The tokens so far, in a buffer each call takes a view of; the mask and the positions
        # are views of the decoder's read-only arrays. With the cache a step feeds the new token
        # and the previous step's present tensors as they came back; without it, the whole
        # sequence from an empty cache, asking for the logits only.
        n = len(prompt_ids)
        ids = np.empty((1, self.context_limit), dtype=np.int64)
        ids[0, :n] = prompt_ids
        ones, positions = self._ones, self._positions
        wanted = self._out_names if use_cache else self._out_names[:1]
        out = self._run(wanted, ids[:, :n], ones[:, :n], positions[:, :n], self._no_past)
        tokens: list[int] = []
        probs: list[float] = []
        steps = 1
        while True:
            tok, prob = pick_token(out[0][0, -1], params, rng)
            probs.append(prob)
            if stop_below is not None and prob < stop_below:
                return DecodeResult(tokens, probs, "low_confidence", steps)
            if tok == self.eos_id:
                return DecodeResult(tokens, probs, "eos", steps)
            tokens.append(tok)
            if should_stop is not None and should_stop(tokens):
                return DecodeResult(tokens, probs, "stop", steps)
            if len(tokens) >= max_new_tokens:
                return DecodeResult(tokens, probs, "length", steps)
            ids[0, n] = tok  # position n; the sequence is now n + 1 tokens long
            if use_cache:
                out = self._run(
                    wanted, ids[:, n : n + 1], ones[:, : n + 1], positions[:, n : n + 1], out[1:]
                )
            else:
                out = self._run(
                    wanted, ids[:, : n + 1], ones[:, : n + 1], positions[:, : n + 1], self._no_past
                )
            n += 1
            steps += 1


def _frozen(a: np.ndarray) -> np.ndarray:
    """``a``, read-only: shared by every call (and thread), never written."""
    a.flags.writeable = False
    return a
