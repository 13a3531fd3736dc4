"""Sampling parameters and their validation: one definition for the edge and the cloud.

A wire :class:`~shared.rpc.inference_pb2.SamplingParams` (where 0 means "the server's default") is
turned into a :class:`SamplingParams` once, at the server boundary, by :func:`sampling_from_wire`;
:func:`validate_request` then refuses what cannot be served with a readable reason.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from shared.rpc import inference_pb2


class InvalidRequest(ValueError):
    """A request refused before any model runs (maps to INVALID_ARGUMENT)."""


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
    """Sampling parameters from the wire's (0 = default, as the proto says)."""
    return SamplingParams(
        max_new_tokens=s.max_new_tokens,
        temperature=s.temperature,
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


def validate_params(params: SamplingParams, *, max_new_tokens_limit: int) -> None:
    """Raise :class:`InvalidRequest` if the sampling parameters are out of range."""
    if params.max_new_tokens < 0:
        raise InvalidRequest(f"max_new_tokens must be >= 0, got {params.max_new_tokens}")
    if params.max_new_tokens > max_new_tokens_limit:
        raise InvalidRequest(
            f"max_new_tokens {params.max_new_tokens} exceeds the limit {max_new_tokens_limit}"
        )
    if params.temperature < 0:
        raise InvalidRequest(f"temperature must be >= 0, got {params.temperature}")
    if not 0.0 < params.top_p <= 1.0:
        raise InvalidRequest(f"top_p must be in (0, 1], got {params.top_p}")
    if any(not s for s in params.stop):
        raise InvalidRequest("stop strings must not be empty")


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
    if not prompt_ids:
        raise InvalidRequest("prompt is empty")
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
