"""The edge's routing plan, route preferences and answer cache (pure logic, no servers)."""

from __future__ import annotations

import time

import pytest

from edge import router
from edge.cache import AnswerCache, cache_key
from shared.rpc import inference_pb2 as pb
from shared.sampling import InvalidRequest, SamplingParams
from shared.settings.edge import CacheSettings

LIMITS = {"context_limit": 64, "proxy_max_new_tokens": 16, "threshold": 0.6}


@pytest.mark.parametrize(
    ("mode", "prompt", "max_new", "run", "stop_below", "reason"),
    [
        ("auto", 10, 16, True, 0.6, None),
        ("auto", 64, 1, False, None, router.PROMPT_TOO_LONG),
        ("auto", 60, 8, False, None, router.MAX_NEW_TOKENS_TOO_LARGE),
        ("auto", 10, 17, False, None, router.MAX_NEW_TOKENS_TOO_LARGE),
        ("edge_only", 10, 40, True, None, None),
        ("cloud_only", 10, 16, False, None, router.POLICY_CLOUD_ONLY),
        ("cloud_only", 100, 16, False, None, router.POLICY_CLOUD_ONLY),
    ],
)
def test_plan_runs_the_proxy_or_escalates_by_policy(
    mode: router.Mode, prompt: int, max_new: int, run: bool, stop_below: float | None, reason: str
) -> None:
    """Policy escalation happens before the proxy runs; only auto mode stops early."""
    plan = router.plan(mode, prompt, max_new, **LIMITS)  # type: ignore[arg-type]
    assert (plan.run_proxy, plan.stop_below, plan.escalate) == (run, stop_below, reason)


def test_edge_only_beyond_the_proxy_context_is_invalid() -> None:
    """edge_only cannot escalate, so a request the proxy cannot fit is refused with the reason."""
    with pytest.raises(InvalidRequest, match="edge only"):
        router.plan("edge_only", 60, 16, **LIMITS)  # type: ignore[arg-type]


def test_route_preference_overrides_the_configured_mode() -> None:
    """AUTO keeps the daemon's mode; EDGE_ONLY / CLOUD_ONLY win; unknown values are refused."""
    assert router.resolve_mode(pb.ROUTE_PREFERENCE_AUTO, "cloud_only") == "cloud_only"
    assert router.resolve_mode(pb.ROUTE_PREFERENCE_EDGE_ONLY, "auto") == "edge_only"
    assert router.resolve_mode(pb.ROUTE_PREFERENCE_CLOUD_ONLY, "auto") == "cloud_only"
    with pytest.raises(InvalidRequest, match="RoutePreference"):
        router.resolve_mode(9, "auto")


def _answer(text: str, route: int = pb.ROUTE_EDGE) -> pb.GenerateResponse:
    return pb.GenerateResponse(text=text, route=route)  # type: ignore[arg-type]


def test_cache_key_changes_with_pack_prompt_parameters_and_mode() -> None:
    """Any difference that could change the answer gives a different key."""
    base = cache_key("v1", "p", SamplingParams(8), "auto", 0.5)
    assert base == cache_key("v1", "p", SamplingParams(8), "auto", 0.5)
    others = [
        cache_key("v2", "p", SamplingParams(8), "auto", 0.5),
        cache_key("v1", "q", SamplingParams(8), "auto", 0.5),
        cache_key("v1", "p", SamplingParams(9), "auto", 0.5),
        cache_key("v1", "p", SamplingParams(8, stop=["x"]), "auto", 0.5),
        cache_key("v1", "p", SamplingParams(8, temperature=1.0, seed=1), "auto", 0.5),
        cache_key("v1", "p", SamplingParams(8), "cloud_only", 0.5),
        cache_key("v1", "p", SamplingParams(8), "auto", 0.6),
    ]
    assert base not in others and len(set(others)) == len(others)


def test_cache_evicts_the_least_recently_used_and_expires_entries() -> None:
    """max_entries bounds the cache (LRU goes first); entries expire after ttl_s."""
    cache = AnswerCache(CacheSettings(max_entries=2, ttl_s=0.2))
    cache.put(("a",), _answer("A"))
    cache.put(("b",), _answer("B"))
    assert cache.get(("a",)) is not None  # a is now the most recently used
    cache.put(("c",), _answer("C"))
    assert cache.get(("b",)) is None and cache.get(("a",)) is not None
    time.sleep(0.25)
    assert cache.get(("a",)) is None and cache.get(("c",)) is None


def test_cache_never_stores_fallback_answers_and_obeys_enabled() -> None:
    """Degraded EDGE_FALLBACK answers are not cached; a disabled cache stores nothing."""
    cache = AnswerCache(CacheSettings())
    cache.put(("f",), _answer("F", pb.ROUTE_EDGE_FALLBACK))
    assert cache.get(("f",)) is None
    cache.put(("e",), _answer("E"))
    cache.reconfigure(CacheSettings(enabled=False))
    assert cache.get(("e",)) is None and len(cache) == 0
    cache.put(("e",), _answer("E"))
    assert len(cache) == 0


def test_cache_returns_copies() -> None:
    """Changing a returned answer does not change the cached one."""
    cache = AnswerCache(CacheSettings())
    cache.put(("k",), _answer("A"))
    got = cache.get(("k",))
    assert got is not None
    got.text = "changed"
    again = cache.get(("k",))
    assert again is not None and again.text == "A"
