"""Scheduler and admission control: queue bound, deadlines, abort, priority, prefill budget."""

from __future__ import annotations

import time

import pytest
import torch

from cloud.engine import (
    EngineCore,
    InvalidRequest,
    QueueFull,
    Request,
    RequestStatus,
    SamplingParams,
    Scheduler,
    validate_request,
)
from cloud.model.gpt import GPT, GPTConfig
from shared.settings.cloud import EngineSettings
from shared.tokenizer import ByteTokenizer

TOK = ByteTokenizer()


def req(rid: str, priority: int = 0, n: int = 4, deadline: float | None = None) -> Request:
    return Request(rid, [1] * n, SamplingParams(4), priority=priority, deadline=deadline)


@pytest.fixture(scope="module")
def model() -> GPT:
    torch.manual_seed(0)
    return GPT(GPTConfig(n_layer=2, n_head=2, n_embd=32)).eval()


@pytest.mark.parametrize("max_waiting", [0, 1, 3])
def test_queue_overflow_raises_queue_full_at_once(max_waiting: int) -> None:
    """Adding beyond the free running slots plus max_waiting raises QueueFull without waiting;
    with a full batch only max_waiting may wait."""
    sched = Scheduler(max_batch_size=2, max_waiting=max_waiting)
    for i in range(2 + max_waiting):  # two take the free slots at the next step
        sched.add(req(f"r{i}"))
    with pytest.raises(QueueFull):
        sched.add(req("over"))
    sched.schedule(time.monotonic())
    assert len(sched.running) == 2 and sched.num_waiting == max_waiting
    with pytest.raises(QueueFull):
        sched.add(req("still over"))


def test_waiting_request_past_deadline_finishes_without_running(model: GPT) -> None:
    """A waiting request whose deadline passed ends FINISHED_DEADLINE and never runs."""
    core = EngineCore(model, TOK, EngineSettings(max_batch_size=1))
    live = core.add_request("live", "abc", SamplingParams(3))
    late = core.add_request("late", "abc", SamplingParams(3), deadline=time.monotonic() + 0.05)
    events = core.step()
    time.sleep(0.06)
    events += core.step()
    assert [e.status for e in events if e.request_id == "late"] == [RequestStatus.FINISHED_DEADLINE]
    assert late.output_ids == [] and late.first_token_at is None and late.finished_at is not None
    while core.has_work():
        core.step()
    assert live.status == RequestStatus.FINISHED_LENGTH


def test_abort_frees_the_slot_for_the_next_waiting_request(model: GPT) -> None:
    """An aborted running request leaves, and the next waiting one joins at the next step."""
    core = EngineCore(model, TOK, EngineSettings(max_batch_size=1))
    a = core.add_request("a", "abc", SamplingParams(20))
    b = core.add_request("b", "xyz", SamplingParams(20))
    core.step()
    assert a.status == RequestStatus.RUNNING and b.status == RequestStatus.WAITING
    core.abort("a")
    events = core.step()
    assert a.status == RequestStatus.FINISHED_ABORTED and a.slot is None
    assert b.status == RequestStatus.RUNNING and len(b.output_ids) == 1
    assert b.slot is not None and core.cache.free_slots == 0  # a's slot went to b
    assert {e.request_id for e in events} == {"a", "b"}


@pytest.mark.parametrize("high_priority", [1, 10])
def test_high_priority_request_is_admitted_first(high_priority: int) -> None:
    """A high-priority request waiting behind low ones is admitted first; equals are FIFO."""
    sched = Scheduler(max_batch_size=1, max_waiting=10)
    sched.add(req("low1"))
    sched.add(req("low2"))
    sched.add(req("high", priority=high_priority))
    order = []
    for _ in range(3):
        out = sched.schedule(time.monotonic())
        order += [r.request_id for r in out.prefill]
        sched.finish(out.prefill[0])
    assert order == ["high", "low1", "low2"]


@pytest.mark.parametrize("budget,admitted", [(4, 1), (8, 2), (100, 3)])
def test_prefill_token_budget_limits_admissions_per_step(budget: int, admitted: int) -> None:
    """New prompts per step stay within the token budget, but at least one is admitted."""
    sched = Scheduler(max_batch_size=8, max_waiting=10, max_prefill_tokens_per_step=budget)
    for i in range(3):
        sched.add(req(f"r{i}", n=4))
    assert len(sched.schedule(time.monotonic()).prefill) == admitted


BAD = [
    ([], SamplingParams(4), "empty"),
    ([1] * 11, SamplingParams(4), "limit is 10"),
    ([1], SamplingParams(-1), "max_new_tokens must be >= 0"),
    ([1], SamplingParams(33), "exceeds the limit 32"),
    ([1], SamplingParams(4, temperature=-0.1), "temperature"),
    ([1], SamplingParams(4, top_p=0.0), "top_p"),
    ([1], SamplingParams(4, top_p=1.5), "top_p"),
    ([1], SamplingParams(4, stop=[""]), "stop"),
    ([1] * 10, SamplingParams(30), "context of 32"),
    ([300], SamplingParams(4), "outside"),
]


@pytest.mark.parametrize("prompt,params,reason", BAD)
def test_invalid_parameters_raise_invalid_request(
    prompt: list[int], params: SamplingParams, reason: str
) -> None:
    """Each bad parameter raises InvalidRequest (a ValueError) naming the problem."""
    with pytest.raises(InvalidRequest, match=reason):
        validate_request(
            prompt,
            params,
            max_prompt_tokens=10,
            max_new_tokens_limit=32,
            block_size=32,
            vocab_size=259,
        )
    assert issubclass(InvalidRequest, ValueError)


def test_engine_rejects_bad_draft_and_applies_default_max_new(model: GPT) -> None:
    """The engine validates drafts and turns max_new_tokens 0 into the default, cut to the
    room the context leaves."""
    core = EngineCore(model, TOK, EngineSettings(default_max_new_tokens=5))
    with pytest.raises(InvalidRequest, match="draft"):
        core.add_request("r", "hi", draft_ids=[999])
    assert core.add_request("ok", "hi").params.max_new_tokens == 5
    long_prompt = "x" * (model.cfg.block_size - 3)  # BOS + prompt leave 2 positions
    assert core.add_request("fit", long_prompt).params.max_new_tokens == 2


def test_status_order_makes_is_finished_a_comparison() -> None:
    """Statuses are ordered; every FINISHED_* status is final."""
    assert sorted(RequestStatus) == list(RequestStatus)
    assert [s.is_finished for s in RequestStatus] == [False, False] + [True] * 6
