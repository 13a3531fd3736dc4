"""AsyncEngine: runs :meth:`EngineCore.step` in a dedicated thread for asyncio handlers.

Handlers put commands on a thread-safe inbox; the engine thread applies them between steps, runs
steps while there is work, and hands each :class:`TokenEvent` to the request's asyncio queue with
``loop.call_soon_threadsafe``. Lifecycle: ``start()`` -> serving -> ``drain(grace_s)`` (refuse
new requests, let running ones finish, abort what is left after the grace) -> stopped.

The engine thread runs ``engine.nice`` steps below the event loop's CPU priority, so that on busy
CPUs the loop admits and refuses calls before the next step. An error inside a step fails that
step's requests; an error anywhere else in the thread stops it, fails every request, refuses new
ones, and calls ``on_death`` so that the server stops instead of hanging its callers.
"""

from __future__ import annotations

import asyncio
import logging
import os
import queue
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import Future
from typing import Any

from cloud.engine.core import EngineCore, TokenEvent
from cloud.engine.scheduler import QueueFull

log = logging.getLogger(__name__)


class EngineFailed(RuntimeError):
    """A step of the engine raised; the requests in it were failed (maps to INTERNAL)."""


class EngineStopped(RuntimeError):
    """The engine is draining or stopped and takes no new requests (maps to UNAVAILABLE)."""


_Events = asyncio.Queue[TokenEvent | EngineFailed]
_Stream = tuple[asyncio.AbstractEventLoop, _Events]


class AsyncEngine:
    """The engine loop in a thread; ``submit`` streams a request's events to async callers."""

    def __init__(self, core: EngineCore, on_death: Callable[[], object] | None = None) -> None:
        """``on_death`` is called (from the engine thread) if that thread stops on an error
        that no request explains: the server then stops instead of hanging its callers."""
        self.core = core
        self._on_death = on_death
        self.died = False
        self._inbox: queue.SimpleQueue[tuple[Any, ...]] = queue.SimpleQueue()
        self._streams: dict[str, _Stream] = {}  # engine thread only
        self._accepting = True
        # Requests submitted and not yet finished, counted on the event loop's thread: when they
        # fill every running slot and the waiting queue, a new one is refused here at once
        # instead of after a trip through the engine thread (which waits for the current step).
        self._in_flight = 0
        sched = core.scheduler
        self._capacity = sched.max_running + sched.max_waiting
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="engine-core", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def check_admission(self) -> None:
        """Raise EngineStopped (draining) or QueueFull (every running slot and waiting place is
        taken) when a new request would be refused; cheap, for the event loop's thread."""
        if not self._accepting:
            raise EngineStopped(
                "the engine stopped after an internal error" if self.died else "engine is draining"
            )
        if self._in_flight >= self._capacity:
            raise QueueFull(
                f"{self._in_flight} requests in flight fill {self.core.scheduler.max_running} "
                f"running slots and {self.core.scheduler.max_waiting} waiting places"
            )

    async def submit(
        self, request_id: str, prompt: str | list[int], **kw: Any
    ) -> AsyncIterator[TokenEvent]:
        """Queue a request and yield its events until the final one (InvalidRequest/QueueFull
        are raised here); leaving the iteration early aborts the request."""
        self.check_admission()
        self._in_flight += 1
        try:
            loop = asyncio.get_running_loop()
            events: asyncio.Queue[TokenEvent | EngineFailed] = asyncio.Queue()
            admitted: Future[None] = Future()
            self._inbox.put(("add", request_id, prompt, kw, (loop, events), admitted))
            finished = False
            try:
                await asyncio.wrap_future(admitted)  # a cancel here cancels ``admitted`` too
                while not finished:
                    event = await events.get()
                    if isinstance(event, EngineFailed):
                        finished = True
                        raise event
                    finished = event.finished
                    yield event
            finally:
                if not finished and _may_be_queued(admitted):
                    self.abort(request_id)
        finally:
            self._in_flight -= 1

    def abort(self, request_id: str) -> None:
        """The client went away: the request leaves the batch at the next step."""
        self._inbox.put(("abort", request_id))

    async def drain(self, grace_s: float) -> None:
        """Refuse new requests, give running ones ``grace_s`` to finish, abort the rest, stop."""
        self._accepting = False
        done: Future[None] = Future()
        self._inbox.put(("drain", time.monotonic() + grace_s, done))
        await asyncio.wrap_future(done)
        self._stop.set()
        await asyncio.to_thread(self._thread.join)

    def _run(self) -> None:
        try:
            lower_thread_priority(self.core.settings.nice)
            self._loop()
        except BaseException:  # a bug outside a step: fail loudly rather than hang every caller
            self._accepting = False
            self.died = True
            log.critical("the engine thread stopped on an unexpected error", exc_info=True)
            try:
                self._fail_all()
            finally:
                if self._on_death is not None:
                    self._on_death()

    def _loop(self) -> None:
        drain: tuple[float, Future[None]] | None = None
        while not self._stop.is_set():
            idle = not self.core.has_work()
            try:
                cmd = self._inbox.get(timeout=0.05) if idle else self._inbox.get_nowait()
            except queue.Empty:
                cmd = None
            while cmd is not None:
                if cmd[0] == "drain":
                    drain = (cmd[1], cmd[2])
                    cmd[2].set_running_or_notify_cancel()  # a cancelled drain still drains
                else:
                    self._apply(cmd)
                try:
                    cmd = self._inbox.get_nowait()
                except queue.Empty:
                    cmd = None
            if drain is not None and time.monotonic() > drain[0]:
                for request_id in list(self._streams):
                    self.core.abort(request_id)
            if self.core.has_work():
                try:
                    events = self.core.step()
                except Exception:  # a bug or a device error: fail these requests, keep serving
                    log.exception("engine step failed; failing %d requests", len(self._streams))
                    self._fail_all()
                    continue
                self._deliver(events)
            if drain is not None and not self.core.has_work():
                if not drain[1].cancelled():
                    drain[1].set_result(None)
                return

    def _apply(self, cmd: tuple[Any, ...]) -> None:
        if cmd[0] == "abort":
            self.core.abort(cmd[1])
            return
        _, request_id, prompt, kw, stream, admitted = cmd
        if not admitted.set_running_or_notify_cancel():
            return  # the caller went away (a deadline, a cancel) before the engine got here
        try:
            self.core.add_request(request_id, prompt, **kw)
        except Exception as exc:  # InvalidRequest, QueueFull: raised in the caller's task
            admitted.set_exception(exc)
            return
        self._streams[request_id] = stream
        admitted.set_result(None)

    def _fail_all(self) -> None:
        for request_id, (loop, events) in self._streams.items():
            self.core.abort(request_id)  # the next step drops them and frees their slots
            failure = EngineFailed(f"the engine failed while serving request {request_id}")
            loop.call_soon_threadsafe(events.put_nowait, failure)
        self._streams.clear()

    def _deliver(self, events: list[TokenEvent]) -> None:
        """Hand a step's events to their requests' queues: one wake-up of each event loop per
        step (not one per event), so the loop's thread is interrupted as little as possible."""
        batches: dict[asyncio.AbstractEventLoop, list[tuple[_Events, TokenEvent]]] = {}
        for event in events:
            stream = self._streams.get(event.request_id)
            if stream is None:
                continue
            if event.finished:
                del self._streams[event.request_id]
            loop, queue_ = stream
            batches.setdefault(loop, []).append((queue_, event))
        for loop, batch in batches.items():
            loop.call_soon_threadsafe(_put_all, batch)


def _may_be_queued(admitted: Future[None]) -> bool:
    """Whether the engine may hold the request of ``admitted`` (so leaving must abort it): not
    when the caller's cancel reached it first, nor when admission raised."""
    if admitted.cancelled():
        return False
    return not admitted.done() or admitted.exception() is None


def lower_thread_priority(increment: int) -> None:
    """Lower the calling thread's CPU priority by ``increment`` nice steps (Linux, where nice
    is per thread; threads it starts later, such as its OpenMP workers, inherit it).

    The engine thread calls this so that, on contended CPUs, the scheduler runs the event loop
    (which admits, refuses and answers health checks in microseconds each) ahead of the next
    step: `autoglm bench overload` measures the effect on the time to RESOURCE_EXHAUSTED.
    """
    if increment <= 0:
        return
    if sys.platform != "linux":
        log.info("engine.nice is applied on Linux only; the engine thread keeps its priority")
        return
    if len(os.sched_getaffinity(0)) < 2:  # the loop would take the only CPU from the engine
        log.info("engine.nice not applied: one CPU, which the engine must not yield to the loop")
        return
    tid = threading.get_native_id()
    try:
        nice = min(19, os.getpriority(os.PRIO_PROCESS, tid) + increment)
        os.setpriority(os.PRIO_PROCESS, tid, nice)
    except OSError as exc:  # e.g. a seccomp profile that forbids it: run at the same priority
        log.warning("could not lower the engine thread's priority: %s", exc)
        return
    log.info("engine thread runs at nice %d", nice)


def _put_all(batch: list[tuple[_Events, TokenEvent]]) -> None:
    for queue_, event in batch:
        queue_.put_nowait(event)
