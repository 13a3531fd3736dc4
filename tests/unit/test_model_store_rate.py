"""The download rate limit: all of ModelStore's downloads together send at most the set rate."""

from __future__ import annotations

import asyncio

import pytest

from cloud.service import model_store
from cloud.service.model_store import RateLimit


def test_downloads_wait_for_the_bytes_beyond_the_bucket(monkeypatch: pytest.MonkeyPatch) -> None:
    """1 MiB/s with a quarter-second bucket: sending 1 MiB at once asks to wait 0.75 s, and the
    bucket refills with the clock (a frozen clock here: the test does not depend on timing)."""
    clock = [100.0]
    waits: list[float] = []

    async def sleep(s: float) -> None:
        waits.append(s)
        clock[0] += s

    monkeypatch.setattr(model_store.time, "monotonic", lambda: clock[0])
    monkeypatch.setattr(model_store.asyncio, "sleep", sleep)
    limit = RateLimit(2**20)
    asyncio.run(limit.take(2**20))
    assert waits == [pytest.approx(0.75)]
    clock[0] += 10  # a long pause refills only up to the bucket
    asyncio.run(limit.take(2**18))
    assert len(waits) == 1


def test_no_limit_never_waits(monkeypatch: pytest.MonkeyPatch) -> None:
    async def sleep(s: float) -> None:
        raise AssertionError("no limit must not wait")

    monkeypatch.setattr(model_store.asyncio, "sleep", sleep)
    asyncio.run(RateLimit(0).take(2**30))
