"""The routing decision made before the proxy runs: which mode, which threshold, and escalation by
policy (a request the proxy cannot or should not answer goes to the cloud without running it).

Escalation by confidence happens while the proxy decodes (``stop_below``): the first token whose
probability is under the threshold stops decoding at once and the draft so far goes to the cloud.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from shared.rpc import inference_pb2 as pb
from shared.sampling import InvalidRequest

Mode = Literal["auto", "edge_only", "cloud_only"]

# A request's route preference; AUTO means "the daemon's configured mode".
MODE_OF_PREFERENCE: dict[int, Mode | None] = {
    pb.ROUTE_PREFERENCE_AUTO: None,
    pb.ROUTE_PREFERENCE_EDGE_ONLY: "edge_only",
    pb.ROUTE_PREFERENCE_CLOUD_ONLY: "cloud_only",
}

# Escalation reasons, as reported in GenerateResponse.escalation_reason and in metrics.
LOW_CONFIDENCE = "low_confidence"
PROMPT_TOO_LONG = "prompt_too_long"
MAX_NEW_TOKENS_TOO_LARGE = "max_new_tokens_too_large"
POLICY_CLOUD_ONLY = "policy_cloud_only"


def resolve_mode(preference: int, configured: Mode) -> Mode:
    """The mode of one request: its own preference, else the daemon's setting."""
    if preference not in MODE_OF_PREFERENCE:
        raise InvalidRequest(f"route {preference} is not a known RoutePreference")
    return MODE_OF_PREFERENCE[preference] or configured


@dataclass(frozen=True)
class Plan:
    mode: Mode
    proxy_fits: bool  # prompt + max_new_tokens within the proxy's context
    run_proxy: bool
    stop_below: float | None  # early-exit threshold while decoding (auto mode only)
    escalate: str | None  # reason when policy sends the request to the cloud unseen


def plan(
    mode: Mode,
    prompt_tokens: int,
    max_new_tokens: int,
    *,
    context_limit: int,
    proxy_max_new_tokens: int,
    threshold: float,
) -> Plan:
    """Decide how to serve a request before any model runs."""
    fits = prompt_tokens + max_new_tokens <= context_limit
    if mode == "cloud_only":
        return Plan(mode, fits, False, None, POLICY_CLOUD_ONLY)
    if mode == "edge_only":
        if not fits:
            raise InvalidRequest(
                f"prompt of {prompt_tokens} tokens + {max_new_tokens} new tokens exceeds the "
                f"proxy's context of {context_limit} tokens, and the route is edge only"
            )
        return Plan(mode, fits, True, None, None)
    if prompt_tokens >= context_limit:
        return Plan(mode, fits, False, None, PROMPT_TOO_LONG)
    if not fits or max_new_tokens > proxy_max_new_tokens:
        return Plan(mode, fits, False, None, MAX_NEW_TOKENS_TOO_LARGE)
    return Plan(mode, fits, True, threshold, None)
