"""AsyncEngine: the engine thread streams events to asyncio callers, aborts and drains."""

from __future__ import annotations

import asyncio
import os
import sys
import threading
from pathlib import Path

import pytest
import torch

from cloud.engine import (
    AsyncEngine,
    EngineCore,
    EngineFailed,
    EngineStopped,
    InvalidRequest,
    SamplingParams,
)
from cloud.engine.loop import _put_all
from cloud.model.gpt import GPT, GPTConfig
from shared.settings.cloud import EngineSettings
from shared.tokenizer import ByteTokenizer
from toolkit.generate import greedy

TOK = ByteTokenizer()


@pytest.fixture(scope="module")
def model() -> GPT:
    torch.manual_seed(0)
    return GPT(GPTConfig(n_layer=2, n_head=2, n_embd=32)).eval()


async def collect(engine: AsyncEngine, rid: str, prompt: str, n: int) -> list[int]:
    ids: list[int] = []
    async for event in engine.submit(rid, prompt, params=SamplingParams(n)):
        ids += event.token_ids
    return ids


def test_concurrent_submits_stream_greedy_outputs_then_drain(model: GPT) -> None:
    """Concurrent submits stream offline-greedy tokens; a drained engine refuses new requests."""
    prompts = ["hi", "hello", "abcdef"]

    async def main() -> list[list[int]]:
        engine = AsyncEngine(EngineCore(model, TOK, EngineSettings(max_batch_size=4)))
        engine.start()
        outs = await asyncio.gather(
            *(collect(engine, f"r{i}", p, 6) for i, p in enumerate(prompts))
        )
        with pytest.raises(InvalidRequest):
            await collect(engine, "bad", "hi", -1)
        await engine.drain(grace_s=1.0)
        with pytest.raises(EngineStopped):
            await collect(engine, "late", "hi", 6)
        return outs

    expected = [g.token_ids for g in greedy(model, TOK, prompts, 6, 1)]
    assert asyncio.run(main()) == expected


def test_leaving_the_stream_early_aborts_and_drain_aborts_after_grace(model: GPT) -> None:
    """A consumer that stops iterating aborts its request; drain aborts what outlives the grace."""

    async def main() -> None:
        core = EngineCore(model, TOK, EngineSettings(max_batch_size=2))
        engine = AsyncEngine(core)
        engine.start()
        stream = engine.submit("a", "hi", params=SamplingParams(50))
        first = await anext(stream)
        assert first.token_ids
        await stream.aclose()
        events = engine.submit("b", "hello", params=SamplingParams(50))
        await anext(events)
        await engine.drain(grace_s=0.0)
        assert not core.has_work()

    asyncio.run(main())


def test_a_failing_step_fails_its_requests_and_the_engine_keeps_serving(model: GPT) -> None:
    """If a step raises, the requests in flight get EngineFailed and later ones are served."""
    core = EngineCore(model, TOK, EngineSettings(max_batch_size=4))
    real_step, calls = core.step, {"n": 0}

    def flaky_step() -> list:
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("simulated device error")
        return real_step()

    core.step = flaky_step  # type: ignore[method-assign]

    async def main() -> list[int]:
        engine = AsyncEngine(core)
        engine.start()
        with pytest.raises(EngineFailed):
            await collect(engine, "doomed", "hi", 4)
        ids = await collect(engine, "fine", "hi", 4)
        await engine.drain(1.0)
        return ids

    assert asyncio.run(main()) == greedy(model, TOK, ["hi"], 4)[0].token_ids
    assert core.cache.free_slots == 4


def test_a_step_wakes_the_event_loop_once_for_all_its_requests(model: GPT) -> None:
    """Events of one step reach every request through a single call_soon_threadsafe."""
    core = EngineCore(model, TOK, EngineSettings(max_batch_size=4))
    steps = {"n": 0}
    real_step = core.step

    def counted_step() -> list:
        steps["n"] += 1
        return real_step()

    core.step = counted_step  # type: ignore[method-assign]

    async def main() -> tuple[list[list[int]], int]:
        loop = asyncio.get_running_loop()
        wakeups = {"n": 0}
        real_call = loop.call_soon_threadsafe

        def counted_call(*args: object, **kw: object) -> asyncio.Handle:
            wakeups["n"] += args[0] is _put_all  # token deliveries, not admission replies
            return real_call(*args, **kw)  # type: ignore[arg-type]

        loop.call_soon_threadsafe = counted_call  # type: ignore[method-assign]
        engine = AsyncEngine(core)
        engine.start()
        outs = await asyncio.gather(
            *(collect(engine, f"r{i}", "hi" * (i + 1), 5) for i in range(4))
        )
        await engine.drain(1.0)
        return outs, wakeups["n"]

    outs, wakeups = asyncio.run(main())
    assert outs == [
        g.token_ids for g in greedy(model, TOK, ["hi" * (i + 1) for i in range(4)], 5, 1)
    ]
    assert 0 < wakeups <= steps["n"]


def engine_thread_nice(model: GPT, nice: int) -> int:
    """The nice value the engine thread runs at with ``engine.nice = nice`` (from /proc)."""

    async def main() -> int:
        engine = AsyncEngine(EngineCore(model, TOK, EngineSettings(nice=nice)))
        engine.start()
        await collect(engine, "r", "hi", 2)  # the thread has set its priority by now
        tid = engine._thread.native_id
        assert tid is not None
        stat = Path(f"/proc/self/task/{tid}/stat").read_text()
        await engine.drain(grace_s=1.0)
        return int(stat.rsplit(")", 1)[1].split()[16])

    return asyncio.run(main())


@pytest.mark.skipif(sys.platform != "linux", reason="per-thread nice is Linux behaviour")
@pytest.mark.parametrize("increment", [0, 7])
def test_the_engine_thread_alone_runs_at_the_configured_lower_priority(
    model: GPT, increment: int
) -> None:
    """engine.nice lowers the engine thread's priority by that much, and nothing else's."""
    base = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
    assert engine_thread_nice(model, increment) == min(19, base + increment)
    assert os.getpriority(os.PRIO_PROCESS, threading.get_native_id()) == base


def test_a_caller_cancelled_before_admission_neither_runs_nor_stops_the_engine(model: GPT) -> None:
    """A call cancelled while its request still waits in the engine's inbox (a client deadline
    at the wrong moment) is dropped, and the engine thread serves the next request."""

    async def main() -> list[int]:
        engine = AsyncEngine(EngineCore(model, TOK, EngineSettings()))
        stream = engine.submit("gone", "hi", params=SamplingParams(4))
        first = asyncio.ensure_future(anext(stream))
        await asyncio.sleep(0.01)  # the request is in the inbox; the engine has not started
        first.cancel()
        with pytest.raises(asyncio.CancelledError):
            await first
        engine.start()
        ids = await asyncio.wait_for(collect(engine, "next", "hi", 4), timeout=10)
        assert not engine.core.has_work()
        await engine.drain(grace_s=1.0)
        return ids

    assert asyncio.run(main()) == greedy(model, TOK, ["hi"], 4, 1)[0].token_ids


def test_an_engine_thread_that_dies_fails_its_requests_refuses_new_ones_and_says_so(
    model: GPT,
) -> None:
    """An error outside a step (a bug) stops the engine thread: its running requests fail,
    new ones are refused with the reason, and ``on_death`` tells the server."""
    core = EngineCore(model, TOK, EngineSettings(max_batch_size=4))
    real_deliver = AsyncEngine._deliver

    def broken_deliver(self: AsyncEngine, events: list) -> None:
        if any(e.request_id == "fatal" for e in events):
            raise RuntimeError("simulated bug in the engine loop")
        real_deliver(self, events)

    async def main() -> None:
        died = asyncio.Event()
        loop = asyncio.get_running_loop()
        engine = AsyncEngine(core, on_death=lambda: loop.call_soon_threadsafe(died.set))
        engine._deliver = broken_deliver.__get__(engine)  # type: ignore[method-assign]
        engine.start()
        assert await collect(engine, "before", "hi", 2)
        with pytest.raises(EngineFailed):
            await asyncio.wait_for(collect(engine, "fatal", "hi", 8), timeout=10)
        await asyncio.wait_for(died.wait(), timeout=10)
        assert engine.died
        with pytest.raises(EngineStopped, match="internal error"):
            await collect(engine, "after", "hi", 2)

    asyncio.run(main())


def test_a_cancelled_drain_still_drains_without_an_engine_error(model: GPT) -> None:
    """Cancelling ``drain`` (a second Ctrl-C) leaves the engine to finish and stop cleanly."""

    async def main() -> AsyncEngine:
        engine = AsyncEngine(EngineCore(model, TOK, EngineSettings()))
        engine.start()
        running = asyncio.ensure_future(collect(engine, "r", "hello", 32))
        await asyncio.sleep(0.01)
        drain = asyncio.ensure_future(engine.drain(grace_s=5.0))
        await asyncio.sleep(0)
        drain.cancel()
        with pytest.raises(asyncio.CancelledError):
            await drain
        await asyncio.wait_for(running, timeout=10)
        await asyncio.to_thread(engine._thread.join, 10)
        return engine

    engine = asyncio.run(main())
    assert not engine._thread.is_alive() and not engine.died


@pytest.mark.skipif(sys.platform != "linux", reason="per-thread nice is Linux behaviour")
def test_engine_nice_is_not_applied_with_a_single_cpu(
    model: GPT, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On one CPU the event loop under a flood of refusals would starve a lower-priority engine
    (its admitted requests would never finish), so the engine keeps the loop's priority."""
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0})
    base = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
    assert engine_thread_nice(model, 10) == base
