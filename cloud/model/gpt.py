"""A GPT-style decoder, written the nanoGPT way, with a KV cache and per-row positions.

One forward serves training, batched decoding in the cloud engine and the ONNX export: it takes
the de-facto decoder inputs (``input_ids``, ``attention_mask``, ``position_ids`` and the past keys
and values) and returns ``logits`` and the present keys and values. Rows of a batch may have
different lengths: padding is masked out by ``attention_mask`` and each row has its own positions.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
from torch import nn
from torch.nn import functional as F

# One layer's cache: (key, value), each [batch, n_head, past_len, head_dim].
KV = tuple[torch.Tensor, torch.Tensor]


@dataclass(frozen=True)
class GPTConfig:
    vocab_size: int = 259  # 256 bytes + PAD, BOS, EOS (shared.tokenizer.ByteTokenizer)
    block_size: int = 64  # context limit; the task suite's longest prompt+answer is under 40 tokens
    n_layer: int = 4
    n_head: int = 4
    n_embd: int = 128
    dropout: float = 0.0  # the task suite is generated afresh each step: nothing to overfit

    def to_dict(self) -> dict[str, int | float]:
        return asdict(self)


def attention_bias(attention_mask: torch.Tensor, new: int, dtype: torch.dtype) -> torch.Tensor:
    """The additive attention bias [B, 1, T, S] of ``new`` (T) queries over S = past + T keys:
    0 where a query may look (causal, and the key is a real token), the dtype's minimum elsewhere.
    """
    S = attention_mask.shape[1]
    # Query i sits at cache index past_len + i and may see keys 0..past_len + i that are real.
    q_idx = torch.arange(new, device=attention_mask.device).unsqueeze(1) + (S - new)  # [T, 1]
    k_idx = torch.arange(S, device=attention_mask.device).unsqueeze(0)  # [1, S]
    allowed = (k_idx <= q_idx).unsqueeze(0) & attention_mask.bool().unsqueeze(1)  # [B, T, S]
    return torch.where(allowed, 0.0, torch.finfo(dtype).min).to(dtype).unsqueeze(1)


class CausalSelfAttention(nn.Module):
    def __init__(self, cfg: GPTConfig) -> None:
        super().__init__()
        assert cfg.n_embd % cfg.n_head == 0, "n_embd must be a multiple of n_head"
        assert (cfg.n_embd // cfg.n_head) % 2 == 0, "rotary embedding needs an even head size"
        self.n_head = cfg.n_head
        self.head_dim = cfg.n_embd // cfg.n_head
        self.c_attn = nn.Linear(cfg.n_embd, 3 * cfg.n_embd)
        # Rotary position embedding (Su et al., 2021): attention sees relative offsets, which
        # small models learn far faster than absolute position vectors on algorithmic tasks.
        inv_freq = 1.0 / (10000 ** (torch.arange(0, self.head_dim, 2).float() / self.head_dim))
        self.inv_freq: torch.Tensor
        self.register_buffer("inv_freq", inv_freq, persistent=False)
        self.c_proj = nn.Linear(cfg.n_embd, cfg.n_embd)
        self.dropout = nn.Dropout(cfg.dropout)

    def _rotate(self, t: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        # t [B, nh, T, hd], pos [B, T]
        ang = pos.unsqueeze(-1).float() * self.inv_freq  # [B, T, hd/2]
        cos, sin = ang.cos().unsqueeze(1), ang.sin().unsqueeze(1)  # [B, 1, T, hd/2]
        t1, t2 = t[..., 0::2], t[..., 1::2]
        return torch.stack([t1 * cos - t2 * sin, t1 * sin + t2 * cos], dim=-1).flatten(-2)

    def forward(
        self, x: torch.Tensor, pos: torch.Tensor, bias: torch.Tensor, past: KV | None
    ) -> tuple[torch.Tensor, KV]:
        B, T, C = x.shape
        q, k, v = self.c_attn(x).split(C, dim=2)
        # [B, T, C] -> [B, n_head, T, head_dim]
        q = q.view(B, T, self.n_head, self.head_dim).transpose(1, 2)
        k = k.view(B, T, self.n_head, self.head_dim).transpose(1, 2)
        v = v.view(B, T, self.n_head, self.head_dim).transpose(1, 2)
        q, k = self._rotate(q, pos), self._rotate(k, pos)  # keys are cached already rotated
        if past is not None:
            k = torch.cat([past[0], k], dim=2)  # [B, nh, S, hd], S = past_len + T
            v = torch.cat([past[1], v], dim=2)
        att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(self.head_dim))  # [B, nh, T, S]
        att = F.softmax(att + bias, dim=-1)
        y = self.dropout(att) @ v  # [B, nh, T, hd]
        y = y.transpose(1, 2).contiguous().view(B, T, C)
        return self.c_proj(y), (k, v)


class MLP(nn.Module):
    def __init__(self, cfg: GPTConfig) -> None:
        super().__init__()
        self.c_fc = nn.Linear(cfg.n_embd, 4 * cfg.n_embd)
        self.c_proj = nn.Linear(4 * cfg.n_embd, cfg.n_embd)
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.c_proj(F.gelu(self.c_fc(x))))


class Block(nn.Module):
    def __init__(self, cfg: GPTConfig) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(cfg.n_embd)
        self.attn = CausalSelfAttention(cfg)
        self.ln_2 = nn.LayerNorm(cfg.n_embd)
        self.mlp = MLP(cfg)

    def forward(
        self, x: torch.Tensor, pos: torch.Tensor, bias: torch.Tensor, past: KV | None
    ) -> tuple[torch.Tensor, KV]:
        a, present = self.attn(self.ln_1(x), pos, bias, past)
        x = x + a
        x = x + self.mlp(self.ln_2(x))
        return x, present


class GPT(nn.Module):
    def __init__(self, cfg: GPTConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.wte = nn.Embedding(cfg.vocab_size, cfg.n_embd)
        self.wpe = nn.Embedding(cfg.block_size, cfg.n_embd)
        self.drop = nn.Dropout(cfg.dropout)
        self.h = nn.ModuleList([Block(cfg) for _ in range(cfg.n_layer)])
        self.ln_f = nn.LayerNorm(cfg.n_embd)
        self.lm_head = nn.Linear(cfg.n_embd, cfg.vocab_size, bias=False)
        self.lm_head.weight = self.wte.weight  # weight tying, as in GPT-2
        self.apply(self._init_weights)
        for name, p in self.named_parameters():  # GPT-2's scaled init of residual projections
            if name.endswith("c_proj.weight"):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * cfg.n_layer))

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def num_params(self) -> int:
        """Parameter count with tied weights counted once."""
        return sum(p.numel() for p in self.parameters())

    def forward(
        self,
        input_ids: torch.Tensor,  # [B, T] new tokens
        attention_mask: torch.Tensor,  # [B, S] 1 = real token, 0 = padding; S = past_len + T
        position_ids: torch.Tensor,  # [B, T] each row's own positions
        past: list[KV] | None = None,  # per layer, [B, nh, past_len, hd]
    ) -> tuple[torch.Tensor, list[KV]]:
        T = input_ids.shape[1]
        assert past is None or past[0][0].shape[2] == attention_mask.shape[1] - T, (
            "attention_mask must cover past + new"
        )
        bias = attention_bias(attention_mask, T, self.wte.weight.dtype)
        x = self.drop(self.wte(input_ids) + self.wpe(position_ids))  # [B, T, C]
        presents: list[KV] = []
        for i, block in enumerate(self.h):
            x, present = block(x, position_ids, bias, None if past is None else past[i])
            presents.append(present)
        logits = self.lm_head(self.ln_f(x))  # [B, T, vocab]
        return logits, presents

    def empty_cache(self, batch: int) -> list[KV]:
        """A zero-length cache, the first step's ``past`` (the ONNX graph needs one)."""
        hd = self.cfg.n_embd // self.cfg.n_head
        z = self.wte.weight.new_zeros(batch, self.cfg.n_head, 0, hd)
        return [(z, z) for _ in range(self.cfg.n_layer)]
