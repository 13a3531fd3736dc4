"""Admission control and iteration-level scheduling.

The interface, all the engine needs:

- :meth:`Scheduler.add` queues a request, or raises :class:`QueueFull` at once;
- :meth:`Scheduler.schedule` is called once per engine step and says which requests run in it;
- :meth:`Scheduler.finish` takes a request that finished while running out of the batch;
- :meth:`Scheduler.abort` marks a request whose client went away; it leaves at the next step.

Not thread-safe: only the engine thread calls it (the async wrapper forwards through a queue).
"""

from __future__ import annotations

import heapq
import itertools
import time
from dataclasses import dataclass, field

from cloud.engine.request import Request, RequestStatus


class QueueFull(RuntimeError):
    """The waiting queue is full (maps to RESOURCE_EXHAUSTED)."""


@dataclass
class SchedulerOutput:
    """What one engine step runs."""

    prefill: list[Request] = field(default_factory=list)  # admitted this step: prompt (+ draft)
    decode: list[Request] = field(default_factory=list)  # already running: one token each
    finished: list[Request] = field(default_factory=list)  # aborted or past deadline, not run


class Scheduler:
    """Priority queue in front of a bounded running batch.

    Waiting order: higher ``priority`` first, then earlier ``arrival``. Admission stops at the
    first waiting request that does not fit (no overtaking), so order is strict. New prompts are
    limited to ``max_prefill_tokens_per_step`` tokens per step (at least one request is always
    admitted when a slot is free) so a burst of long prompts does not stall running decodes.
    ``batching=False`` runs one sequence at a time (the benchmark baseline).
    """

    def __init__(
        self,
        max_batch_size: int,
        max_waiting: int,
        *,
        max_prefill_tokens_per_step: int = 512,
        batching: bool = True,
    ) -> None:
        assert max_batch_size >= 1, "max_batch_size must be >= 1"
        self.max_running = max_batch_size if batching else 1
        self.max_waiting = max_waiting
        self.max_prefill_tokens = max_prefill_tokens_per_step
        self._waiting: list[tuple[int, float, int, Request]] = []  # heap
        self._counter = itertools.count()  # tie-break: FIFO among equal (priority, arrival)
        self.running: list[Request] = []
        self._aborted: set[str] = set()

    @property
    def num_waiting(self) -> int:
        return len(self._waiting)

    def has_work(self) -> bool:
        return bool(self._waiting or self.running)

    def add(self, req: Request, now: float | None = None) -> None:
        """Queue ``req``; raises :class:`QueueFull` when ``max_waiting`` requests already wait
        beyond the free running slots (a request that takes a free slot at the next step is
        not waiting for room, so ``max_waiting = 0`` still serves up to ``max_running``)."""
        free_slots = self.max_running - len(self.running)
        if len(self._waiting) >= self.max_waiting + free_slots:
            raise QueueFull(
                f"{len(self._waiting)} requests already waiting for {free_slots} free running "
                f"slots and {self.max_waiting} waiting places (max_waiting)"
            )
        req.status = RequestStatus.WAITING
        req.queued_at = time.monotonic() if now is None else now
        heapq.heappush(self._waiting, (-req.priority, req.arrival, next(self._counter), req))

    def abort(self, request_id: str) -> None:
        """Mark ``request_id`` to leave at the next :meth:`schedule` (unknown ids are ignored)."""
        self._aborted.add(request_id)

    def finish(self, req: Request) -> None:
        """Remove a request that finished during a step from the running batch."""
        self.running.remove(req)

    def schedule(self, now: float) -> SchedulerOutput:
        """Pick this step's work: drop aborted/expired requests, then admit waiting ones."""
        out = SchedulerOutput()
        self._drop_aborted_and_expired(now, out)
        budget = self.max_prefill_tokens
        while self._waiting and len(self.running) < self.max_running:
            req = self._waiting[0][3]
            cost = len(req.prompt_ids) + len(req.draft_ids)
            if out.prefill and cost > budget:
                break  # the rest waits for the next step
            heapq.heappop(self._waiting)
            budget -= cost
            req.status = RequestStatus.RUNNING
            out.prefill.append(req)
            self.running.append(req)
        out.decode = [r for r in self.running if r not in out.prefill]
        return out

    def _drop_aborted_and_expired(self, now: float, out: SchedulerOutput) -> None:
        def gone(req: Request) -> RequestStatus | None:
            if req.request_id in self._aborted:
                return RequestStatus.FINISHED_ABORTED
            if req.deadline is not None and now > req.deadline:
                return RequestStatus.FINISHED_DEADLINE
            return None

        if not (self._aborted or any(e[3].deadline is not None for e in self._waiting)) and not (
            any(r.deadline is not None for r in self.running)
        ):
            return
        keep_waiting = []
        for entry in self._waiting:
            status = gone(entry[3])
            if status is None:
                keep_waiting.append(entry)
            else:
                self._end(entry[3], status, now, out)
        if len(keep_waiting) != len(self._waiting):
            heapq.heapify(keep_waiting)
            self._waiting = keep_waiting
        for req in list(self.running):
            status = gone(req)
            if status is not None:
                self.running.remove(req)
                self._end(req, status, now, out)
        self._aborted.clear()  # ids not found belong to requests already finished

    @staticmethod
    def _end(req: Request, status: RequestStatus, now: float, out: SchedulerOutput) -> None:
        req.status = status
        req.finished_at = now
        out.finished.append(req)
