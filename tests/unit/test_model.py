"""The decoder: KV-cache decoding and batching give the same numbers as plain recomputation."""

from __future__ import annotations

import pytest
import torch

from cloud.model.gpt import GPT, GPTConfig
from shared.tokenizer import ByteTokenizer
from toolkit.generate import greedy

CFG = GPTConfig(n_layer=2, n_head=2, n_embd=32, block_size=48)


@pytest.fixture(scope="module")
def model() -> GPT:
    torch.manual_seed(0)
    return GPT(CFG).eval()


def _full(model: GPT, ids: list[int]) -> torch.Tensor:
    x = torch.tensor([ids])
    logits, _ = model(x, torch.ones_like(x), torch.arange(len(ids)).unsqueeze(0))
    return logits[0]  # [T, V]


@torch.no_grad()
def test_kv_cache_decoding_equals_full_recomputation(model: GPT) -> None:
    """Feeding tokens one by one through the cache gives the logits of one full pass."""
    ids = [257, *b"sort dcba=abc"]
    reference = _full(model, ids)
    past = model.empty_cache(1)
    for t, tok in enumerate(ids):
        logits, past = model(
            torch.tensor([[tok]]),
            torch.ones((1, t + 1), dtype=torch.long),
            torch.tensor([[t]]),
            past,
        )
        torch.testing.assert_close(logits[0, 0], reference[t], rtol=1e-4, atol=1e-5)


@torch.no_grad()
def test_prefill_then_cache_equals_full_recomputation(model: GPT) -> None:
    """A multi-token prefill followed by cached steps matches the full pass."""
    ids = [257, *b"rev hello=oll"]
    reference = _full(model, ids)
    x = torch.tensor([ids[:8]])
    logits, past = model(x, torch.ones_like(x), torch.arange(8).unsqueeze(0))
    torch.testing.assert_close(logits[0], reference[:8], rtol=1e-4, atol=1e-5)
    for t in range(8, len(ids)):
        logits, past = model(
            torch.tensor([[ids[t]]]),
            torch.ones((1, t + 1), dtype=torch.long),
            torch.tensor([[t]]),
            past,
        )
        torch.testing.assert_close(logits[0, 0], reference[t], rtol=1e-4, atol=1e-5)


@torch.no_grad()
def test_batched_mixed_lengths_equal_one_at_a_time(model: GPT) -> None:
    """Left-padded rows of different lengths get the logits each would get alone."""
    seqs = [[257, *b"add 1 2="], [257, *b"count a abcabca="], [257, *b"x="]]
    L = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), L), 256)
    mask = torch.zeros((len(seqs), L), dtype=torch.long)
    for r, s in enumerate(seqs):
        ids[r, L - len(s) :] = torch.tensor(s)
        mask[r, L - len(s) :] = 1
    pos = (mask.cumsum(1) - 1).clamp(min=0)
    logits, _ = model(ids, mask, pos)
    for r, s in enumerate(seqs):
        torch.testing.assert_close(logits[r, L - len(s) :], _full(model, s), rtol=1e-4, atol=1e-5)


def test_batched_greedy_equals_one_at_a_time(model: GPT) -> None:
    """Greedy decoding of a batch gives each prompt the tokens it gets on its own."""
    tok = ByteTokenizer()
    prompts = ["add 1 2=", "count a abcabca=", "x=", "sort zyxwvu="]
    together = greedy(model, tok, prompts, max_new_tokens=12)
    alone = [greedy(model, tok, [p], max_new_tokens=12)[0] for p in prompts]
    assert [g.token_ids for g in together] == [g.token_ids for g in alone]
    for a, b in zip(together, alone, strict=True):
        assert a.token_probs == pytest.approx(b.token_probs, rel=1e-4)


def test_context_limit_is_enforced() -> None:
    """Asking for more positions than the model has fails before the forward pass."""
    model = GPT(CFG).eval()
    with pytest.raises(AssertionError, match="context limit"):
        greedy(model, ByteTokenizer(), ["a" * 40], max_new_tokens=16)


def test_weight_tying_counts_parameters_once() -> None:
    """lm_head shares the embedding matrix."""
    model = GPT(CFG)
    assert model.lm_head.weight is model.wte.weight
    assert model.num_params() == sum(p.numel() for p in model.parameters())


def test_demo_proxy_has_at_most_an_eighth_of_the_full_models_parameters() -> None:
    """The demo recipe's proxy is at most 1/8 the size of its full model."""
    from toolkit.build import RECIPES

    demo = RECIPES["demo"]
    assert GPT(demo.proxy).num_params() * 8 <= GPT(demo.full).num_params()
