"""The engine core: owns the model and runs ``step()`` = schedule -> forward -> sample -> update.

One step runs every scheduled row: the prefill rows of newly admitted requests (prompt, plus the
edge's draft when there is one) as one batched forward, and the one-token decode rows of running
requests as another. Two forwards rather than one padded batch: in one batch every decode row
would compute as many columns as the longest prompt (`autoglm bench cloud` measures the gain;
docs/benchmarks.md).

KV cache: a preallocated slot per running sequence (:mod:`cloud.engine.kv_cache`). A prefill
writes the prompt's keys and values into a fresh slot; a decode step reads the running slots up
to the longest length with one indexed read per layer, masks each row beyond its own length, and
writes the new column in place.

Draft verification (greedy only): the prefill row runs prompt + draft in one forward. The model's
argmax after the prompt and after each draft prefix is compared with the draft; the longest
matching prefix is accepted, and the argmax after it is a free extra token. The cache length is
cut to prompt + accepted tokens, so decoding continues exactly as if those tokens had been
generated one by one: the output is the one greedy decoding gives without a draft. With
temperature > 0 the draft is ignored: accepting tokens because they equal the argmax would skew
the sampled distribution, and exact speculative sampling needs the proxy's whole distribution,
which a draft does not carry.

Stop strings: generation ends as soon as the decoded text contains one; ``Request.text`` (and the
streamed text) stop just before it, while ``output_ids`` keep every generated token.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from torch.nn import functional as F

from cloud.engine.kv_cache import SlotCache
from cloud.engine.request import (
    Request,
    RequestStatus,
    SamplingParams,
    validate_request,
)
from cloud.engine.scheduler import Scheduler, SchedulerOutput
from cloud.model.gpt import GPT
from shared.sampling import first_stop, pick_token
from shared.settings.cloud import EngineSettings
from shared.tokenizer import Tokenizer

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TokenEvent:
    """What one step produced for one request: new tokens and text, and the status after it."""

    request_id: str
    token_ids: list[int]  # new tokens (EOS excluded); several when draft tokens were accepted
    token_probs: list[float] = field(default_factory=list)
    text: str = ""  # newly completed text (held back while it may be the start of a stop string)
    status: RequestStatus = RequestStatus.RUNNING
    # On the final event only: the finished request (usage, timings); the engine is done with it.
    request: Request | None = None

    @property
    def finished(self) -> bool:
        return self.status.is_finished


class EngineCore:
    """Owns the model; not thread-safe (one engine thread calls everything)."""

    def __init__(
        self,
        model: GPT,
        tokenizer: Tokenizer,
        settings: EngineSettings | None = None,
        *,
        device: str | torch.device = "cpu",
        max_prefill_tokens_per_step: int = 512,
        observer: Callable[[SchedulerOutput, Scheduler], None] | None = None,
    ) -> None:
        """``observer`` sees every step's schedule (the service feeds its metrics from it)."""
        self.settings = settings or EngineSettings()
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        self.tokenizer = tokenizer
        self.scheduler = Scheduler(
            self.settings.max_batch_size,
            self.settings.max_waiting,
            max_prefill_tokens_per_step=max_prefill_tokens_per_step,
            batching=self.settings.batching,
        )
        self.observer = observer
        cfg = self.model.cfg
        self.cache = SlotCache(
            cfg.n_layer, cfg.n_head, cfg.n_embd // cfg.n_head, cfg.block_size,
            self.scheduler.max_running, self.device, self.model.wte.weight.dtype,
        )  # fmt: skip
        self.num_steps = 0

    def add_request(
        self,
        request_id: str,
        prompt: str | list[int],
        params: SamplingParams | None = None,
        *,
        priority: int = 0,
        deadline: float | None = None,
        draft_ids: list[int] | None = None,
    ) -> Request:
        """Validate and queue a request; raises InvalidRequest or QueueFull."""
        params = params or SamplingParams()
        ids = self.tokenizer.encode(prompt) if isinstance(prompt, str) else list(prompt)
        cfg = self.model.cfg
        if params.max_new_tokens == 0:  # the default, cut to the room the context leaves
            room = cfg.block_size - len(ids)
            params.max_new_tokens = max(1, min(self.settings.default_max_new_tokens, room))
        validate_request(
            ids,
            params,
            max_prompt_tokens=self.settings.max_prompt_tokens,
            max_new_tokens_limit=self.settings.max_new_tokens_limit,
            block_size=cfg.block_size,
            vocab_size=cfg.vocab_size,
            draft_ids=draft_ids,
        )
        draft = list(draft_ids or []) if params.temperature == 0 else []
        req = Request(request_id, ids, params, priority, deadline, draft[: params.max_new_tokens])
        req.draft_tokens = len(req.draft_ids)
        self.scheduler.add(req)
        return req

    def abort(self, request_id: str) -> None:
        self.scheduler.abort(request_id)

    def has_work(self) -> bool:
        return self.scheduler.has_work()

    @torch.inference_mode()
    def step(self) -> list[TokenEvent]:
        """One iteration: schedule, batched forward(s), sample, update states, emit events."""
        now = time.monotonic()
        sched = self.scheduler.schedule(now)
        for req in sched.prefill:
            req.prefill_at = now
        for req in sched.finished:  # aborted or past their deadline
            self._release(req)
        events = [TokenEvent(r.request_id, [], status=r.status, request=r) for r in sched.finished]
        if not (sched.prefill or sched.decode):
            self._observe(sched)
            return events
        self.num_steps += 1
        for rows, run in ((sched.prefill, self._prefill), (sched.decode, self._decode)):
            if not rows:
                continue
            done, failed = self._run_isolated(rows, run)
            now = time.monotonic()
            for req, exc in failed:
                events.append(self._fail(req, exc, now))
            for req, tokens, probs in done:
                events.append(self._update(req, tokens, probs, now))
                if req.is_finished:
                    self._release(req)
                    self.scheduler.finish(req)
        self._observe(sched)
        return events

    def _observe(self, sched: SchedulerOutput) -> None:
        """The step's schedule and the queues as the step leaves them: after the last step the
        running and waiting counts are zero (gauges fall to zero when the engine goes idle)."""
        if self.observer is not None:
            self.observer(sched, self.scheduler)

    def _run_isolated(
        self, rows: list[Request], run: Callable[[list[Request]], torch.Tensor]
    ) -> tuple[list[tuple[Request, list[int], list[float]]], list[tuple[Request, Exception]]]:
        """Forward and pick for ``rows``; when that fails, each row again on its own, so that a
        request that breaks the step fails alone and its neighbours go on. Returns the rows
        done (with their tokens and probabilities) and the rows failed (with the error). The
        retry costs time only after a failure; a forward that raised changed no state (slots
        are taken, and lengths advanced, only after it)."""
        failed: list[tuple[Request, Exception]] = []
        try:
            parts = [(rows, run(rows))]
        except Exception as exc:
            if len(rows) == 1:
                return [], [(rows[0], exc)]
            parts = []
            for r in rows:
                try:
                    parts.append(([r], run([r])))
                except Exception as row_exc:
                    failed.append((r, row_exc))
        done: list[tuple[Request, list[int], list[float]]] = []
        for group, out in parts:
            try:
                picks = self._pick(group, out)
            except Exception:
                for i, r in enumerate(group):
                    try:
                        done.append((r, *self._pick([r], out[i : i + 1])[0]))
                    except Exception as row_exc:
                        failed.append((r, row_exc))
            else:
                done += [(r, toks, probs) for r, (toks, probs) in zip(group, picks, strict=True)]
        return done, failed

    def _fail(self, req: Request, exc: Exception, now: float) -> TokenEvent:
        """Finish ``req`` with FINISHED_ERROR: its slot is freed, its caller told why."""
        req.status = RequestStatus.FINISHED_ERROR
        req.error = f"{type(exc).__name__}: {exc}"
        req.finished_at = now
        log.error("engine: request %s failed alone in a step: %s", req.request_id, req.error)
        self._release(req)
        self.scheduler.finish(req)
        return TokenEvent(req.request_id, [], status=req.status, request=req)

    def _release(self, req: Request) -> None:
        if req.slot is not None:
            self.cache.release(req.slot)
            req.slot = None

    def _prefill(self, rows: list[Request]) -> torch.Tensor:
        """Prompt (+ draft) of new requests as one left-padded batch; each takes a cache slot.
        Returns the logits ``[B, T, V]``: every row ends at the last column."""
        new_ids = [r.prompt_ids + r.draft_ids for r in rows]
        B, T = len(rows), max(len(n) for n in new_ids)
        ids = torch.full((B, T), self.tokenizer.pad_id, dtype=torch.long)
        mask = torch.zeros((B, T), dtype=torch.long)
        for i, new in enumerate(new_ids):
            ids[i, T - len(new) :] = torch.tensor(new)
            mask[i, T - len(new) :] = 1
        pos = (mask.cumsum(1) - 1).clamp(min=0)
        dev = self.device
        out, presents = self.model(ids.to(dev), mask.to(dev), pos.to(dev))  # [B, T, V]
        try:
            for i, (req, new) in enumerate(zip(rows, new_ids, strict=True)):
                req.slot = self.cache.acquire()
                self.cache.write_prefix(req.slot, presents, i, slice(T - len(new), T))
                req.cache_len = len(new)
        except Exception:  # leave no slot taken: the rows may be run again, one by one
            for req in rows:
                self._release(req)
            raise
        return out

    def _decode(self, rows: list[Request]) -> torch.Tensor:
        """One new token per running request; the past is read from and written to the slots."""
        dev, B = self.device, len(rows)
        lens = torch.tensor([r.cache_len for r in rows])
        P = int(lens.max())
        slots = torch.tensor([r.slot for r in rows], device=dev)
        ids = torch.tensor([[r.output_ids[-1]] for r in rows], device=dev)
        mask = torch.zeros((B, P + 1), dtype=torch.long)
        mask[:, :P] = (torch.arange(P).unsqueeze(0) < lens.unsqueeze(1)).long()  # own past only
        mask[:, P] = 1  # the new token
        past = self.cache.gather(slots, P)
        out, presents = self.model(ids, mask.to(dev), lens.unsqueeze(1).to(dev), past)
        self.cache.write_column(slots, lens.to(dev), presents, P)
        for r in rows:
            r.cache_len += 1
        return out  # [B, 1, V]

    def _pick(self, rows: list[Request], out: torch.Tensor) -> list[tuple[list[int], list[float]]]:
        """Next token(s) and their probabilities for every row of a forward's logits ``out``
        ``[B, T, V]``. The greedy rows are decided together: one softmax, one max and one copy
        to Python for the whole batch (per row, those calls cost more than the arithmetic)."""
        last = out[:, -1].float()  # [B, V]: each row's next-token logits
        picks: list[tuple[list[int], list[float]]] = [([], [])] * len(rows)
        greedy = [i for i, r in enumerate(rows) if r.params.temperature == 0 and not r.draft_ids]
        if greedy:
            rows_logits = last if len(greedy) == len(rows) else last[greedy]
            p, t = F.softmax(rows_logits, dim=-1).max(dim=-1)
            for i, tok, prob in zip(greedy, t.tolist(), p.tolist(), strict=True):
                picks[i] = ([tok], [prob])
        for i, req in enumerate(rows):
            if req.draft_ids:  # greedy: drafts of sampled requests are dropped at admission
                picks[i] = self._verify_draft(req, out[i, -len(req.draft_ids) - 1 :])
            elif req.params.temperature > 0:
                picks[i] = self._sample(req, last[i])
        return picks

    @staticmethod
    def _verify_draft(req: Request, logits: torch.Tensor) -> tuple[list[int], list[float]]:
        """First step of a request with a draft: logits ``[len(draft) + 1, V]`` after the prompt
        and after each draft prefix; keep the longest prefix the argmax agrees with, plus the
        argmax after it."""
        p, t = F.softmax(logits.float(), dim=-1).max(dim=-1)
        toks, probs = t.tolist(), p.tolist()
        k = 0
        while k < len(req.draft_ids) and req.draft_ids[k] == toks[k]:
            k += 1
        req.draft_accepted = k
        req.draft_ids = []
        req.cache_len = len(req.prompt_ids) + k  # forget the rejected draft tokens
        return toks[: k + 1], probs[: k + 1]

    @staticmethod
    def _sample(req: Request, logits: torch.Tensor) -> tuple[list[int], list[float]]:
        """A token drawn as :func:`shared.sampling.pick_token` draws it (the edge's sampler), with
        the request's own generator (seeded: reproducible whatever else is in the batch)."""
        if req.generator is None:
            req.generator = np.random.default_rng(req.params.seed)  # None: fresh OS entropy
        tok, prob = pick_token(logits.float().cpu().numpy(), req.params, req.generator)
        return [tok], [prob]

    def _update(
        self, req: Request, tokens: list[int], probs: list[float], now: float
    ) -> TokenEvent:
        """Append sampled tokens, check EOS / length / stop strings / deadline, build the event."""
        if req.first_token_at is None:
            req.first_token_at = now
        new: list[int] = []
        used = 0
        for t, p in zip(tokens, probs, strict=True):
            used += 1
            req.token_probs.append(p)
            if t == self.tokenizer.eos_id:
                req.status = RequestStatus.FINISHED_EOS
                break
            req.output_ids.append(t)
            new.append(t)
            if req.decoder is None:
                req.decoder = self.tokenizer.stream_decoder()
            req.text += req.decoder.push(t)
            if self._cut_at_stop(req):
                req.status = RequestStatus.FINISHED_STOP
                break
            if req.num_generated >= req.params.max_new_tokens:
                req.status = RequestStatus.FINISHED_LENGTH
                break
        if not req.is_finished and req.deadline is not None and now > req.deadline:
            req.status = RequestStatus.FINISHED_DEADLINE
        if req.is_finished:
            req.finished_at = now
            if req.decoder is not None and req.status != RequestStatus.FINISHED_STOP:
                req.text += req.decoder.flush()  # an unfinished character at the end, replaced
            ready = req.text
        else:
            ready = req.text[: len(req.text) - self._held_back(req)]
        delta, req.emitted_text = ready[len(req.emitted_text) :], ready
        final = req if req.is_finished else None
        return TokenEvent(req.request_id, new, probs[:used], delta, req.status, final)

    @staticmethod
    def _cut_at_stop(req: Request) -> bool:
        cut = first_stop(req.text, req.params.stop)
        if cut is not None:
            req.text = req.text[:cut]
        return cut is not None

    @staticmethod
    def _held_back(req: Request) -> int:
        """Characters at the end of the text not yet safe to stream: the start of a stop string.
        (A partly decoded character is not in the text yet: the decoder holds its bytes.)"""
        text, hold = req.text, 0
        for s in req.params.stop:
            for n in range(min(len(s) - 1, len(text)), hold, -1):
                if text.endswith(s[:n]):
                    hold = n
                    break
        return hold
