"""The statistics every benchmark reports: percentiles (numpy's linear interpolation) and
their summaries, in one place so that every table means the same by "p99"."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile of ``values`` in their unit; NaN when there are none."""
    return float(np.percentile(values, q)) if len(values) else float("nan")


def ms(seconds: Sequence[float], q: float) -> float | None:
    """The ``q``-th percentile of durations in seconds, in ms; None when there are none."""
    return 1000 * float(np.percentile(seconds, q)) if len(seconds) else None


def summary(values: Sequence[float]) -> dict[str, float | None]:
    """Mean, p50, p95 and p99 in the values' unit (None when there are none)."""
    if not values:
        return {"mean": None, "p50": None, "p95": None, "p99": None}
    a = np.asarray(values, dtype=np.float64)
    p50, p95, p99 = np.percentile(a, [50, 95, 99])
    return {"mean": float(a.mean()), "p50": float(p50), "p95": float(p95), "p99": float(p99)}
