"""The engine's internal request: what was asked, how far it got, and its lifecycle status.

Wire messages are turned into :class:`Request` objects once, at the service boundary; from then on
only the engine thread touches them.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from enum import IntEnum

import numpy as np

from shared.sampling import InvalidRequest, SamplingParams, validate_request
from shared.tokenizer import IncrementalDecoder

__all__ = ["InvalidRequest", "Request", "RequestStatus", "SamplingParams", "validate_request"]


class RequestStatus(IntEnum):
    """Lifecycle, ordered: every status from FINISHED_EOS on is final."""

    WAITING = 0
    RUNNING = 1
    FINISHED_EOS = 2
    FINISHED_LENGTH = 3
    FINISHED_STOP = 4
    FINISHED_ABORTED = 5
    FINISHED_DEADLINE = 6
    FINISHED_ERROR = 7  # this request (alone) made a step fail; ``Request.error`` says why

    @property
    def is_finished(self) -> bool:
        return self >= RequestStatus.FINISHED_EOS


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
    decoder: IncrementalDecoder | None = field(default=None, repr=False)  # text, token by token
    error: str = ""  # why the engine failed this request (status FINISHED_ERROR)
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
    generator: np.random.Generator | None = field(default=None, repr=False)

    @property
    def is_finished(self) -> bool:
        return self.status.is_finished

    @property
    def num_generated(self) -> int:
        """Tokens sampled so far, EOS included (what max_new_tokens bounds)."""
        return len(self.token_probs)
