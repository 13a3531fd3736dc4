"""Training of the full model and distillation of the proxy from it.

Both use the same loop over freshly generated task-suite batches (no example is seen twice, so
there is nothing to overfit). The loss covers the answer tokens and the EOS that ends them; the
prompt is context only. Distillation mixes soft targets from the teacher at a temperature with
the hard labels (Hinton et al., 2015), and adds outlier exposure (Hendrycks et al., 2019): on
prompts with made-up command words the proxy is pushed towards a flat distribution, so that a
task it never learned shows up as low confidence instead of a confident wrong answer.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch.nn import functional as F
from tqdm import tqdm

from cloud.model.gpt import GPT
from shared.tokenizer import ByteTokenizer
from toolkit import tasks


@dataclass(frozen=True)
class TrainConfig:
    steps: int
    batch_size: int = 128
    lr: float = 3e-3  # high for a transformer, right for models this small
    warmup: int = 100
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    seed: int = 0
    tiers: tuple[int, ...] = (1, 2, 3)  # the difficulty tiers the batches are drawn from
    # distillation only
    temperature: float = 2.0
    alpha: float = 0.5  # weight of the soft-target term; (1 - alpha) on the hard labels
    noise_share: float = 0.1  # share of each batch given to outlier-exposure prompts
    # bfloat16 autocast for matmuls (weights, optimiser and softmax stay fp32): faster steps on a
    # CPU with AVX512-BF16; `autoglm bench train` measures it (docs/benchmarks.md).
    bf16: bool = True


@dataclass
class Batch:
    input_ids: torch.Tensor  # [B, T]
    attention_mask: torch.Tensor  # [B, T]
    position_ids: torch.Tensor  # [B, T]
    targets: torch.Tensor  # [B, T] next token
    loss_mask: torch.Tensor  # [B, T] 1 where the target is an answer token or EOS
    noise: torch.Tensor  # [B] True for outlier-exposure rows


def collate(tok: ByteTokenizer, prompts: list[str], answers: list[str], noise: list[bool]) -> Batch:
    """Right-padded training batch: [BOS] prompt answer [EOS], loss on answer and EOS."""
    seqs, starts = [], []
    for p, a in zip(prompts, answers, strict=True):
        ids = tok.encode(p) + tok.encode(a, add_bos=False) + [tok.eos_id]
        seqs.append(ids)
        starts.append(len(tok.encode(p)) - 1)  # first position whose target is an answer token
    T = max(len(s) for s in seqs) - 1
    B = len(seqs)
    inp = torch.full((B, T), tok.pad_id, dtype=torch.long)
    tgt = torch.full((B, T), tok.pad_id, dtype=torch.long)
    att = torch.zeros((B, T), dtype=torch.long)
    lm = torch.zeros((B, T), dtype=torch.bool)
    for i, (s, st) in enumerate(zip(seqs, starts, strict=True)):
        n = len(s) - 1
        inp[i, :n] = torch.tensor(s[:-1])
        tgt[i, :n] = torch.tensor(s[1:])
        att[i, :n] = 1
        lm[i, st:n] = True
    pos = torch.arange(T).unsqueeze(0).expand(B, T).contiguous()
    return Batch(inp, att, pos, tgt, lm, torch.tensor(noise, dtype=torch.bool))


def task_batches(
    tok: ByteTokenizer, cfg: TrainConfig, families: tuple[str, ...], noise_share: float = 0.0
) -> Iterator[Batch]:
    """Endless seeded batches from the train split, with optional outlier-exposure rows."""
    examples = tasks.stream(cfg.seed, families, tiers=cfg.tiers)
    rng = random.Random(f"{cfg.seed}:noise")
    n_noise = round(cfg.batch_size * noise_share)
    while True:
        exs = [next(examples) for _ in range(cfg.batch_size - n_noise)]
        noise = tasks.noise_prompts(rng, n_noise)
        noise_answers = [tasks.random_word(rng, 1, 6) for _ in noise]
        yield collate(
            tok,
            [e.prompt for e in exs] + noise,
            [e.answer for e in exs] + noise_answers,
            [False] * len(exs) + [True] * n_noise,
        )


def _lr_at(step: int, cfg: TrainConfig) -> float:
    """Linear warm-up, then cosine decay to a tenth of the peak."""
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    progress = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
    return cfg.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def _loss(model: GPT, b: Batch, cfg: TrainConfig, teacher: GPT | None) -> torch.Tensor:
    logits, _ = model(b.input_ids, b.attention_mask, b.position_ids)  # [B, T, V]
    real = b.loss_mask & ~b.noise.unsqueeze(1)
    hard = F.cross_entropy(logits[real].float(), b.targets[real])
    if teacher is None:
        return hard
    with torch.no_grad():
        t_logits, _ = teacher(b.input_ids, b.attention_mask, b.position_ids)
    T = cfg.temperature
    soft = F.kl_div(
        F.log_softmax(logits[real].float() / T, dim=-1),
        F.log_softmax(t_logits[real].float() / T, dim=-1),
        log_target=True,
        reduction="batchmean",
    ) * (T * T)
    loss = cfg.alpha * soft + (1 - cfg.alpha) * hard
    noisy = b.loss_mask & b.noise.unsqueeze(1)
    if noisy.any():  # KL(uniform || student): 0 when the student is flat on unknown commands
        log_p = F.log_softmax(logits[noisy].float(), dim=-1)
        loss = loss - log_p.mean() - math.log(log_p.shape[-1])
    return loss


def train(
    model: GPT,
    cfg: TrainConfig,
    families: tuple[str, ...],
    *,
    teacher: GPT | None = None,
    desc: str = "train",
) -> dict[str, float]:
    """Train ``model`` in place for ``cfg.steps`` steps; returns the final loss and the time."""
    torch.manual_seed(cfg.seed)
    tok = ByteTokenizer()
    noise_share = cfg.noise_share if teacher is not None else 0.0
    batches = task_batches(tok, cfg, families, noise_share)
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW(
        [
            {"params": decay, "weight_decay": cfg.weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ],
        lr=cfg.lr,
        betas=(0.9, 0.98),
    )
    if teacher is not None:
        teacher.eval()
    model.train()
    start = time.perf_counter()
    ema = float("nan")
    bar = tqdm(range(cfg.steps), desc=desc, unit="step", dynamic_ncols=True, mininterval=1.0)
    for step in bar:
        for group in opt.param_groups:
            group["lr"] = _lr_at(step, cfg)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=cfg.bf16):
            loss = _loss(model, next(batches), cfg, teacher)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()
        ema = loss.item() if math.isnan(ema) else 0.95 * ema + 0.05 * loss.item()
        if step % 20 == 0:
            bar.set_postfix(loss=f"{ema:.4f}")
    bar.close()
    model.eval()
    return {"final_loss": ema, "seconds": time.perf_counter() - start, "steps": cfg.steps}
