"""EngineCore: batched greedy equals offline greedy, drafts, sampling and stop strings."""

from __future__ import annotations

import pytest
import torch

from cloud.engine import EngineCore, InvalidRequest, RequestStatus, SamplingParams, TokenEvent
from cloud.model.gpt import GPT, GPTConfig
from shared.settings.cloud import EngineSettings
from shared.tokenizer import ByteTokenizer
from toolkit.generate import greedy

TOK = ByteTokenizer()
PROMPTS = ["hi", "hello world", "abcabcabcabc", "x", "the quick brown fox", "42+17=", "zz", "ok?"]
MAX_NEW = 12


def tiny_model() -> GPT:
    torch.manual_seed(0)
    model = GPT(GPTConfig(n_layer=2, n_head=2, n_embd=32)).eval()
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.normal_(0.0, 0.3)  # larger than GPT-2's init so untrained greedy outputs vary
    return model


@pytest.fixture(scope="module")
def model() -> GPT:
    return tiny_model()


@pytest.fixture(scope="module")
def reference(model: GPT) -> dict[str, list[int]]:
    """Offline greedy tokens of every prompt, decoded one prompt at a time."""
    outs = greedy(model, TOK, PROMPTS, MAX_NEW, batch_size=1)
    return {p: g.token_ids for p, g in zip(PROMPTS, outs, strict=True)}


def make_core(model: GPT, **settings: object) -> EngineCore:
    prefill = settings.pop("max_prefill_tokens_per_step", 512)
    assert isinstance(prefill, int)
    return EngineCore(model, TOK, EngineSettings(**settings), max_prefill_tokens_per_step=prefill)


def run_all(core: EngineCore) -> list[list[TokenEvent]]:
    steps = []
    while core.has_work():
        steps.append(core.step())
    return steps


@pytest.mark.parametrize("batch,prefill_budget", [(8, 512), (3, 512), (4, 8)])
def test_concurrent_greedy_matches_offline_greedy(
    model: GPT, reference: dict[str, list[int]], batch: int, prefill_budget: int
) -> None:
    """Eight requests of different lengths, admitted at different steps, give offline greedy."""
    core = make_core(model, max_batch_size=batch, max_prefill_tokens_per_step=prefill_budget)
    reqs, steps = [], []
    for i, prompt in enumerate(PROMPTS):
        reqs.append(core.add_request(f"r{i}", prompt, SamplingParams(max_new_tokens=MAX_NEW)))
        if i % 3 == 2:
            steps += [core.step(), core.step()]
    streamed = {r.request_id: "" for r in reqs}
    for events in steps + run_all(core):
        for e in events:
            streamed[e.request_id] += e.text
    for req, prompt in zip(reqs, PROMPTS, strict=True):
        assert req.output_ids == reference[prompt], prompt
        assert req.status in (RequestStatus.FINISHED_LENGTH, RequestStatus.FINISHED_EOS)
        assert req.text == TOK.decode(req.output_ids)
        assert streamed[req.request_id] == req.text
        assert req.slot is None and req.first_token_at is not None
    assert core.cache.free_slots == batch  # every slot given back


def test_batching_off_runs_one_at_a_time_with_same_outputs(
    model: GPT, reference: dict[str, list[int]]
) -> None:
    """batching=False keeps one running sequence and gives the same greedy outputs."""
    core = make_core(model, max_batch_size=8, batching=False)
    reqs = [core.add_request(f"r{i}", p, SamplingParams(MAX_NEW)) for i, p in enumerate(PROMPTS)]
    while core.has_work():
        core.step()
        assert len(core.scheduler.running) <= 1
    assert [r.output_ids for r in reqs] == [reference[p] for p in PROMPTS]


def _draft(kind: str, ref: list[int]) -> list[int]:
    wrong = [(t + 1) % 256 for t in ref]
    return {"correct": ref[:6], "partial": ref[:3] + wrong[3:6], "wrong": wrong[:6]}[kind]


@pytest.mark.parametrize("kind,accepted", [("correct", 6), ("partial", 3), ("wrong", 0)])
def test_draft_gives_the_no_draft_output(
    model: GPT, reference: dict[str, list[int]], kind: str, accepted: int
) -> None:
    """Correct, partly wrong and wrong drafts all give the no-draft output, batched with others."""
    core = make_core(model, max_batch_size=4)
    plain = core.add_request("plain", PROMPTS[1], SamplingParams(MAX_NEW))
    core.step()
    core.step()
    ref = reference[PROMPTS[4]]
    req = core.add_request("d", PROMPTS[4], SamplingParams(MAX_NEW), draft_ids=_draft(kind, ref))
    run_all(core)
    assert req.output_ids == ref
    assert plain.output_ids == reference[PROMPTS[1]]
    assert (req.draft_tokens, req.draft_accepted) == (6, accepted)


def test_correct_draft_saves_decode_steps(model: GPT, reference: dict[str, list[int]]) -> None:
    """A fully accepted draft of 6 tokens saves 6 steps."""
    steps = {}
    for draft in ([], reference[PROMPTS[0]][:6]):
        core = make_core(model)
        core.add_request("r", PROMPTS[0], SamplingParams(MAX_NEW), draft_ids=draft)
        run_all(core)
        steps[len(draft)] = core.num_steps
    assert steps == {0: MAX_NEW, 6: MAX_NEW - 6}


def test_draft_is_ignored_when_sampling(model: GPT) -> None:
    """With temperature > 0 the draft is not verified."""
    core = make_core(model)
    params = SamplingParams(MAX_NEW, temperature=1.0, seed=0)
    req = core.add_request("r", "hi", params, draft_ids=[1, 2])
    run_all(core)
    assert (req.draft_tokens, req.draft_accepted) == (0, 0)
    assert req.is_finished and req.num_generated >= 1  # a sampled EOS may end it early


def test_greedy_rows_mixed_with_sampled_rows_give_offline_greedy(
    model: GPT, reference: dict[str, list[int]]
) -> None:
    """Greedy rows are decided together even when sampled rows share their step."""
    core = make_core(model, max_batch_size=8)
    greedy_reqs = {}
    for i, prompt in enumerate(PROMPTS[:6]):
        if i % 2:
            core.add_request(f"s{i}", prompt, SamplingParams(MAX_NEW, temperature=1.0, seed=i))
        else:
            greedy_reqs[prompt] = core.add_request(f"g{i}", prompt, SamplingParams(MAX_NEW))
    run_all(core)
    assert {p: r.output_ids for p, r in greedy_reqs.items()} == {
        p: reference[p] for p in greedy_reqs
    }


@pytest.mark.parametrize("top_p", [1.0, 0.8])
def test_seeded_sampling_is_reproducible_and_seed_dependent(model: GPT, top_p: float) -> None:
    """The same seed gives the same tokens, even batched with others; another seed differs."""
    core = make_core(model)
    params = [SamplingParams(MAX_NEW, temperature=1.0, top_p=top_p, seed=s) for s in (1, 1, 2)]
    reqs = [core.add_request(f"r{i}", "hello", p) for i, p in enumerate(params)]
    core.add_request("other", "abc", SamplingParams(MAX_NEW))
    run_all(core)
    alone = make_core(model)
    solo = alone.add_request("s", "hello", SamplingParams(MAX_NEW, 1.0, top_p, seed=1))
    run_all(alone)
    assert reqs[0].output_ids == reqs[1].output_ids == solo.output_ids
    assert reqs[0].output_ids != reqs[2].output_ids


def test_stop_string_ends_generation_and_is_cut_from_text(
    model: GPT, reference: dict[str, list[int]]
) -> None:
    """A stop string ends with FINISHED_STOP; text and stream stop just before it."""
    full = TOK.decode(reference[PROMPTS[0]])
    i = next(i for i in range(1, len(full) - 1) if "\ufffd" not in full[i : i + 2])
    stop = full[i : i + 2]
    core = make_core(model)
    req = core.add_request("r", PROMPTS[0], SamplingParams(MAX_NEW, stop=["never", stop]))
    streamed = "".join(e.text for events in run_all(core) for e in events)
    assert req.status == RequestStatus.FINISHED_STOP
    assert req.text == streamed == full[: full.find(stop)]
    assert len(req.output_ids) < MAX_NEW


def test_final_event_carries_the_request_and_observer_sees_every_step(model: GPT) -> None:
    """Only the last event of a request carries it, with its timings; the observer sees each
    step's schedule, including the batch of requests admitted together."""
    seen: list[int] = []
    core = EngineCore(
        model,
        TOK,
        EngineSettings(max_batch_size=4),
        observer=lambda out, sched: seen.append(len(out.prefill) + len(out.decode)),
    )
    for i, p in enumerate(PROMPTS[:3]):
        core.add_request(f"r{i}", p, SamplingParams(MAX_NEW))
    events = [e for step in run_all(core) for e in step]
    finals = [e for e in events if e.finished]
    assert sorted(e.request_id for e in finals) == ["r0", "r1", "r2"]
    assert all(e.request is None for e in events if not e.finished)
    for e in finals:
        req = e.request
        assert req is not None and req.request_id == e.request_id
        assert req.queued_at is not None and req.prefill_at is not None
        assert req.first_token_at is not None and req.finished_at is not None
        assert req.queued_at <= req.prefill_at <= req.first_token_at <= req.finished_at
    assert seen[0] == 3 and len(seen) == core.num_steps


class _NoWholeDecode(ByteTokenizer):
    """A byte tokenizer whose whole-sequence decode must not be called while generating."""

    def decode(self, ids: list[int]) -> str:
        raise AssertionError("the engine decoded the whole output again")


def test_output_text_is_decoded_incrementally_and_equals_a_whole_decode(model: GPT) -> None:
    """Text comes from the tokenizer's incremental decoder (O(1) a token, not the whole output
    again): streamed deltas join to the final text, which is what decoding all tokens gives,
    multi-byte and invalid UTF-8 included (sampled bytes of an untrained model)."""
    core = EngineCore(model, _NoWholeDecode(), EngineSettings(max_batch_size=8))
    params = [SamplingParams(MAX_NEW, temperature=3.0, seed=s) for s in range(8)]
    for i, p in enumerate(params):
        core.add_request(f"r{i}", PROMPTS[i], p)
    deltas: dict[str, list[str]] = {}
    finals = {}
    for events in run_all(core):
        for e in events:
            deltas.setdefault(e.request_id, []).append(e.text)
            if e.request is not None:
                finals[e.request_id] = e.request
    assert len(finals) == 8
    for rid, req in finals.items():
        assert "".join(deltas[rid]) == req.text == TOK.decode(req.output_ids)
    assert any(len(r.text.encode()) != len(r.output_ids) for r in finals.values())


def test_a_request_that_breaks_a_step_fails_alone_and_its_neighbours_finish(
    model: GPT, reference: dict[str, list[int]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A fault in one row's sampling (injected) fails that request with FINISHED_ERROR and the
    reason; the seven others in the same batch give offline greedy's answers."""
    core = make_core(model, max_batch_size=8)
    real = EngineCore._sample

    def sample(req: object, logits: torch.Tensor) -> tuple[list[int], list[float]]:
        if getattr(req, "request_id", "") == "bad":
            raise FloatingPointError("probabilities contain NaN")
        return real(req, logits)  # type: ignore[arg-type]

    monkeypatch.setattr(EngineCore, "_sample", staticmethod(sample))
    for i, p in enumerate(PROMPTS[:7]):
        core.add_request(f"r{i}", p, SamplingParams(MAX_NEW))
    core.add_request("bad", "hello", SamplingParams(MAX_NEW, temperature=1.0, seed=0))
    finals = {e.request_id: e.request for step in run_all(core) for e in step if e.request}
    bad = finals.pop("bad")
    assert bad is not None and bad.status == RequestStatus.FINISHED_ERROR
    assert "NaN" in bad.error
    assert {rid: r.output_ids for rid, r in finals.items() if r is not None} == {
        f"r{i}": reference[p] for i, p in enumerate(PROMPTS[:7])
    }
    assert core.cache.free_slots == 8  # every slot given back, the failed request's too


@pytest.mark.parametrize("temperature", [float("nan"), float("inf"), -1.0, 1e6, float("-inf")])
def test_temperatures_that_would_break_a_step_are_refused_before_it(
    model: GPT, temperature: float
) -> None:
    core = make_core(model)
    with pytest.raises(InvalidRequest, match="temperature"):
        core.add_request("x", "hi", SamplingParams(MAX_NEW, temperature=temperature))


def test_queue_gauges_fall_to_zero_when_the_engine_goes_idle(model: GPT) -> None:
    from cloud.service.metrics import ServiceMetrics
    from cloud.service.servicer import metrics_observer

    metrics = ServiceMetrics()
    core = EngineCore(
        model, TOK, EngineSettings(max_batch_size=8), observer=metrics_observer(metrics)
    )
    for i, p in enumerate(PROMPTS):
        core.add_request(f"r{i}", p, SamplingParams(MAX_NEW))
    core.step()
    assert metrics.running._value.get() > 0  # type: ignore[attr-defined]
    run_all(core)
    assert metrics.running._value.get() == 0  # type: ignore[attr-defined]
    assert metrics.waiting._value.get() == 0  # type: ignore[attr-defined]
