"""Sampling parameters and their validation: one definition for the edge and the cloud.

A wire :class:`~shared.rpc.inference_pb2.SamplingParams` (where 0 means "the server's default") is
turned into a :class:`SamplingParams` once, at the server boundary, by :func:`sampling_from_wire`;
:func:`validate_request` then refuses what cannot be served with a readable reason.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from shared.rpc import inference_pb2


class InvalidRequest(ValueError):
    """A request refused before any model runs (maps to INVALID_ARGUMENT)."""


# The ranges of the numeric sampling parameters (docs/grpc.md). A temperature below
# GREEDY_BELOW is greedy decoding (as in vLLM): dividing logits by it would overflow.
MAX_TEMPERATURE = 100.0
GREEDY_BELOW = 1e-5
MAX_STOP_STRINGS = 16
MAX_STOP_CHARS = 256


@dataclass
class SamplingParams:
    max_new_tokens: int = 0  # 0 = the server's default
    temperature: float = 0.0  # 0 = greedy (argmax)
    top_p: float = 1.0  # nucleus sampling mass, in (0, 1]; only used when temperature > 0
    seed: int | None = None  # per-request generator seed; None = nondeterministic
    stop: list[str] = field(default_factory=list)  # generation ends before any of these strings

    @property
    def deterministic(self) -> bool:
        """Greedy, or sampled with a fixed seed: the same request gives the same answer."""
        return self.temperature == 0 or self.seed is not None


def sampling_from_wire(s: inference_pb2.SamplingParams) -> SamplingParams:
    """Sampling parameters from the wire's (0 = default, as the proto says); a temperature in
    (0, GREEDY_BELOW) becomes 0 (greedy)."""
    temperature = s.temperature
    if 0 < temperature < GREEDY_BELOW:
        temperature = 0.0
    return SamplingParams(
        max_new_tokens=s.max_new_tokens,
        temperature=temperature,
        top_p=s.top_p if s.top_p != 0 else 1.0,
        seed=s.seed if s.HasField("seed") else None,
        stop=list(s.stop),
    )


def sampling_to_wire(p: SamplingParams) -> inference_pb2.SamplingParams:
    """The inverse of :func:`sampling_from_wire` (the edge forwards resolved parameters)."""
    wire = inference_pb2.SamplingParams(
        max_new_tokens=p.max_new_tokens, temperature=p.temperature, top_p=p.top_p, stop=p.stop
    )
    if p.seed is not None:
        wire.seed = p.seed
    return wire


def require_prompt(prompt: str | Sequence[int]) -> None:
    """Raise :class:`InvalidRequest` for an empty prompt (text at a server, ids at an engine)."""
    if not prompt:
        raise InvalidRequest("prompt is empty")


def validate_params(params: SamplingParams, *, max_new_tokens_limit: int) -> None:
    """Raise :class:`InvalidRequest` if the sampling parameters are out of range."""
    if params.max_new_tokens < 0:
        raise InvalidRequest(f"max_new_tokens must be >= 0, got {params.max_new_tokens}")
    if params.max_new_tokens > max_new_tokens_limit:
        raise InvalidRequest(
            f"max_new_tokens {params.max_new_tokens} exceeds the limit {max_new_tokens_limit}"
        )
    t = params.temperature
    if not (t == 0 or GREEDY_BELOW <= t <= MAX_TEMPERATURE):  # also refuses NaN
        raise InvalidRequest(
            f"temperature must be 0 (greedy) or in [{GREEDY_BELOW:g}, {MAX_TEMPERATURE:g}], got {t}"
        )
    if not 0.0 < params.top_p <= 1.0:  # also refuses NaN
        raise InvalidRequest(f"top_p must be in (0, 1], got {params.top_p}")
    if any(not s for s in params.stop):
        raise InvalidRequest("stop strings must not be empty")
    if len(params.stop) > MAX_STOP_STRINGS or any(len(s) > MAX_STOP_CHARS for s in params.stop):
        raise InvalidRequest(
            f"at most {MAX_STOP_STRINGS} stop strings of at most {MAX_STOP_CHARS} characters"
        )


def validate_request(
    prompt_ids: list[int],
    params: SamplingParams,
    *,
    max_prompt_tokens: int,
    max_new_tokens_limit: int,
    block_size: int,
    vocab_size: int | None = None,
    draft_ids: list[int] | None = None,
) -> None:
    """Raise :class:`InvalidRequest` with a readable reason if a model cannot serve the request.

    ``max_prompt_tokens`` 0 means the model's context (``block_size``).
    """
    limit = max_prompt_tokens or block_size
    require_prompt(prompt_ids)
    if len(prompt_ids) > limit:
        raise InvalidRequest(f"prompt has {len(prompt_ids)} tokens; the limit is {limit}")
    validate_params(params, max_new_tokens_limit=max_new_tokens_limit)
    if len(prompt_ids) + params.max_new_tokens > block_size:
        raise InvalidRequest(
            f"prompt ({len(prompt_ids)} tokens) + max_new_tokens ({params.max_new_tokens}) "
            f"exceeds the model's context of {block_size} tokens"
        )
    if vocab_size is not None:
        for name, ids in (("prompt", prompt_ids), ("draft", draft_ids or [])):
            bad = [t for t in ids if not 0 <= t < vocab_size]
            if bad:
                raise InvalidRequest(f"{name} has token ids outside [0, {vocab_size}): {bad[:5]}")


def first_stop(text: str, stops: Sequence[str]) -> int | None:
    """Index in ``text`` where the earliest stop string starts; None when none occurs."""
    hits = [i for i in (text.find(s) for s in stops) if i >= 0]
    return min(hits) if hits else None


def softmax(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    e = np.exp(x - x.max())
    return np.asarray(e / e.sum())


def pick_token(
    logits: np.ndarray, params: SamplingParams, rng: np.random.Generator
) -> tuple[int, float]:
    """The next token from one row of logits, and the probability the model's own (untempered)
    distribution gives it.

    Greedy (temperature 0) takes the largest logit. Sampling draws from ``softmax(logits /
    temperature)`` cut to the smallest set of tokens whose mass reaches ``top_p`` (nucleus
    sampling, renormalised), with the caller's generator. The probability returned is the
    model's, before temperature and top-p (as vLLM's default raw logprobs): a token's confidence
    is then the same whatever the sampling knobs, so a calibrated threshold means the same on
    the edge and the cloud, greedy or sampled. Edge runner and cloud engine both use this."""
    if params.temperature == 0:  # greedy: the largest logit; its softmax needs only the sum
        x = logits.astype(np.float64)
        tok = int(x.argmax())
        return tok, float(1.0 / np.exp(x - x[tok]).sum())  # = softmax(x)[tok], as exp(0) = 1
    p = softmax(logits)
    dist = softmax(logits.astype(np.float64) / params.temperature)
    if params.top_p < 1.0:
        order = np.argsort(-dist, kind="stable")
        sorted_p = dist[order]
        outside = np.cumsum(sorted_p) - sorted_p >= params.top_p  # mass before it covers top_p
        sorted_p[outside] = 0.0
        dist = np.zeros_like(dist)
        dist[order] = sorted_p
        dist /= dist.sum()
    tok = int(rng.choice(len(dist), p=dist))
    return tok, float(p[tok])
