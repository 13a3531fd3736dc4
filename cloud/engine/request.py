"""The engine's internal request: what was asked, how far it got, and its lifecycle status.

Wire messages are turned into :class:`Request` objects once, at the service boundary; from then on
only the engine thread touches them.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from enum import IntEnum

import torch

# One layer's cache of one sequence: (key, value), each [1, n_head, cache_len, head_dim].
KV = tuple[torch.Tensor, torch.Tensor]


class InvalidRequest(ValueError):
    """A request the engine refuses before queueing it (maps to INVALID_ARGUMENT)."""


class RequestStatus(IntEnum):
    """Lifecycle, ordered: every status from FINISHED_EOS on is final."""

    WAITING = 0
    RUNNING = 1
    FINISHED_EOS = 2
    FINISHED_LENGTH = 3
    FINISHED_STOP = 4
    FINISHED_ABORTED = 5
    FINISHED_DEADLINE = 6

    @property
    def is_finished(self) -> bool:
        return self >= RequestStatus.FINISHED_EOS


@dataclass
class SamplingParams:
    max_new_tokens: int = 0  # 0 = the engine's default_max_new_tokens
    temperature: float = 0.0  # 0 = greedy (argmax)
    top_p: float = 1.0  # nucleus sampling mass, in (0, 1]; only used when temperature > 0
    seed: int | None = None  # per-request generator seed; None = nondeterministic
    stop: list[str] = field(default_factory=list)  # generation ends before any of these strings


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
    """Raise :class:`InvalidRequest` with a readable reason if the request cannot be served.

    ``max_prompt_tokens`` 0 means the model's context (``block_size``).
    """
    limit = max_prompt_tokens or block_size
    if not prompt_ids:
        raise InvalidRequest("prompt is empty")
    if len(prompt_ids) > limit:
        raise InvalidRequest(f"prompt has {len(prompt_ids)} tokens; the limit is {limit}")
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


@dataclass(eq=False)
class Request:
    """One generation request and its progress; owned by the engine thread."""

    request_id: str
    prompt_ids: list[int]
    params: SamplingParams
    priority: int = 0  # higher is admitted first
    deadline: float | None = None  # time.monotonic() value; None = no deadline
    draft_ids: list[int] = field(default_factory=list)  # the edge proxy's greedy draft
    arrival: float = field(default_factory=time.monotonic)

    status: RequestStatus = RequestStatus.WAITING
    output_ids: list[int] = field(default_factory=list)  # generated tokens, EOS excluded
    token_probs: list[float] = field(default_factory=list)  # one per generated token, EOS included
    text: str = ""  # decoded output; cut before the stop string when one matched
    emitted_text: str = ""  # the part of ``text`` already sent in TokenEvents
    draft_tokens: int = 0  # draft tokens verified (0 when the draft was ignored)
    draft_accepted: int = 0  # of those, accepted = decode steps saved
    queued_at: float | None = None
    prefill_at: float | None = None  # start of the step that ran its prefill
    first_token_at: float | None = None
    finished_at: float | None = None

    # Engine state: the KV-cache slot and how many of its columns hold this sequence's tokens.
    slot: int | None = None
    cache_len: int = 0
    generator: torch.Generator | None = field(default=None, repr=False)

    @property
    def is_finished(self) -> bool:
        return self.status.is_finished

    @property
    def num_generated(self) -> int:
        """Tokens sampled so far, EOS included (what max_new_tokens bounds)."""
        return len(self.token_probs)
