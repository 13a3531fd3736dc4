"""Batched greedy decoding with a KV cache, for evaluation and calibration.

Prompts are left-padded so that every row's next token sits in the last column; each row keeps
its own positions. The cloud engine has its own scheduler-driven loop; this one is the simple
offline form of the same decoding.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.nn import functional as F

from cloud.model.gpt import GPT
from shared.tokenizer import ByteTokenizer


@dataclass(frozen=True)
class Generation:
    token_ids: list[int]  # generated tokens, EOS excluded
    token_probs: list[float]  # probability the model gave each generated token, EOS included
    text: str

    @property
    def confidence(self) -> float:
        """The lowest per-token probability: one unsure token makes the answer unsure."""
        return min(self.token_probs) if self.token_probs else 0.0


@torch.no_grad()
def greedy(
    model: GPT, tok: ByteTokenizer, prompts: list[str], max_new_tokens: int, batch_size: int = 256
) -> list[Generation]:
    """Greedy answers for ``prompts``, ``batch_size`` at a time."""
    out: list[Generation] = []
    for i in range(0, len(prompts), batch_size):
        out.extend(_greedy_batch(model, tok, prompts[i : i + batch_size], max_new_tokens))
    return out


def _greedy_batch(
    model: GPT, tok: ByteTokenizer, prompts: list[str], max_new: int
) -> list[Generation]:
    enc = [tok.encode(p) for p in prompts]
    B, L = len(enc), max(len(e) for e in enc)
    assert L + max_new <= model.cfg.block_size, f"{L}+{max_new} tokens exceed the context limit"
    ids = torch.full((B, L), tok.pad_id, dtype=torch.long)
    mask = torch.zeros((B, L), dtype=torch.long)
    for r, e in enumerate(enc):
        ids[r, L - len(e) :] = torch.tensor(e)
        mask[r, L - len(e) :] = 1
    pos = (mask.cumsum(1) - 1).clamp(min=0)
    logits, past = model(ids, mask, pos)
    last = logits[:, -1]  # [B, V]
    next_pos = pos[:, -1:] + 1  # [B, 1]
    tokens: list[list[int]] = [[] for _ in range(B)]
    probs: list[list[float]] = [[] for _ in range(B)]
    done = torch.zeros(B, dtype=torch.bool)
    for _ in range(max_new):
        p, t = F.softmax(last.float(), dim=-1).max(dim=-1)  # [B], [B]
        for r in range(B):
            if not done[r]:
                probs[r].append(float(p[r]))
                if int(t[r]) != tok.eos_id:
                    tokens[r].append(int(t[r]))
        done |= t == tok.eos_id
        if bool(done.all()):
            break
        mask = torch.cat([mask, torch.ones((B, 1), dtype=torch.long)], dim=1)
        logits, past = model(t.unsqueeze(1), mask, next_pos, past)
        last = logits[:, -1]
        next_pos = next_pos + 1
    return [Generation(t, p, tok.decode(t)) for t, p in zip(tokens, probs, strict=True)]
