"""Routing by confidence: the calibration table, thresholds from targets, and router metrics.

A request's confidence is the lowest probability the proxy gave any token it wrote; the router
escalates a request whose confidence falls below the threshold. The calibration table, measured
on held-out data when the pack is built, says for each threshold which share of requests stays at
the edge and how accurate the mix is (proxy answers where kept, full-model answers where
escalated), so operators can route by a target instead of a raw number.

Router metrics follow the RouteLLM evaluation (Ong et al., 2024):

- PGR, performance gap recovered: ``(acc(mix) - acc(weak)) / (acc(strong) - acc(weak))``.
- APGR: the area under PGR as the share of calls sent to the strong model goes from 0 to 1.
- CPT(x%): the smallest share of calls to the strong model that reaches a PGR of x%.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field


class CalibrationPoint(BaseModel):
    model_config = ConfigDict(extra="forbid")
    threshold: float = Field(description="escalate when confidence < threshold")
    edge_share: float = Field(description="share of requests answered at the edge")
    accuracy: float = Field(description="exact-match accuracy of the mix")


class CalibrationTable(BaseModel):
    model_config = ConfigDict(extra="forbid")
    confidence: Literal["min_token_prob"] = "min_token_prob"
    split: str = Field(description="the data the table was measured on")
    n: int = Field(ge=1, description="number of requests measured")
    proxy_accuracy: float
    full_accuracy: float
    points: list[CalibrationPoint] = Field(min_length=1, description="sorted by threshold")

    def for_max_escalation(self, share: float) -> CalibrationPoint:
        """The most accurate point that escalates at most ``share`` of requests."""
        ok = [p for p in self.points if 1.0 - p.edge_share <= share + 1e-9]
        if not ok:
            return self.points[0]
        return max(ok, key=lambda p: (p.accuracy, p.edge_share))

    def for_min_accuracy_share(self, share: float) -> CalibrationPoint:
        """The point that keeps the most requests at the edge while the mix keeps at least
        ``share`` of the full model's accuracy (the highest threshold when none does)."""
        goal = share * self.full_accuracy
        ok = [p for p in self.points if p.accuracy >= goal - 1e-9]
        if not ok:
            return self.points[-1]
        return max(ok, key=lambda p: (p.edge_share, p.accuracy))


def build_table(
    confidence: Sequence[float],
    proxy_correct: Sequence[bool],
    full_correct: Sequence[bool],
    split: str,
    n_points: int = 201,
) -> CalibrationTable:
    """Measure the table on one split; thresholds at the confidences' quantiles, plus 0 and 1+."""
    conf = np.asarray(confidence, dtype=np.float64)
    pc = np.asarray(proxy_correct, dtype=bool)
    fc = np.asarray(full_correct, dtype=bool)
    assert conf.shape == pc.shape == fc.shape and conf.size > 0, "one value per request"
    qs = np.quantile(conf, np.linspace(0.0, 1.0, n_points))
    thresholds = np.unique(np.concatenate([[0.0], qs, [np.nextafter(1.0, 2.0)]]))
    points = []
    for t in thresholds:
        keep = conf >= t
        points.append(
            CalibrationPoint(
                threshold=float(t),
                edge_share=float(keep.mean()),
                accuracy=float(np.where(keep, pc, fc).mean()),
            )
        )
    return CalibrationTable(
        split=split,
        n=int(conf.size),
        proxy_accuracy=float(pc.mean()),
        full_accuracy=float(fc.mean()),
        points=points,
    )


def pgr_curve(
    confidence: Sequence[float], weak_correct: Sequence[bool], strong_correct: Sequence[bool]
) -> tuple[np.ndarray, np.ndarray]:
    """PGR after escalating the k least confident requests, for k = 0..n.

    Returns (share of calls to the strong model, PGR), both of length n + 1. Ties in confidence
    are broken by request order, so the curve is deterministic.
    """
    conf = np.asarray(confidence, dtype=np.float64)
    weak = np.asarray(weak_correct, dtype=np.float64)
    strong = np.asarray(strong_correct, dtype=np.float64)
    n = conf.size
    order = np.argsort(conf, kind="stable")  # least confident first
    gain = np.concatenate([[0.0], np.cumsum(strong[order] - weak[order])])  # [n + 1]
    acc = weak.mean() + gain / n
    gap = strong.mean() - weak.mean()
    pgr = (acc - weak.mean()) / gap if gap > 0 else np.zeros_like(acc)
    return np.arange(n + 1) / n, pgr


def apgr(share: np.ndarray, pgr: np.ndarray) -> float:
    """Area under the PGR curve (trapezoids over every possible number of escalations)."""
    return float(np.sum((pgr[1:] + pgr[:-1]) / 2 * np.diff(share)))


def cpt(share: np.ndarray, pgr: np.ndarray, target: float) -> float:
    """Smallest share of calls to the strong model whose PGR reaches ``target`` (1.0 if never)."""
    hit = np.nonzero(pgr >= target - 1e-12)[0]
    return float(share[hit[0]]) if hit.size else 1.0


def oracle_scores(weak_correct: Sequence[bool], strong_correct: Sequence[bool]) -> list[float]:
    """Confidences of a router that knows the answers: escalate exactly where it helps first."""
    return [
        0.0 if (not w and s) else 2.0 if (w and not s) else 1.0
        for w, s in zip(weak_correct, strong_correct, strict=True)
    ]


def router_report(
    confidence: Sequence[float],
    weak_correct: Sequence[bool],
    strong_correct: Sequence[bool],
    threshold: float,
) -> dict[str, float]:
    """The headline numbers for a confidence router, with random and oracle routers beside it."""
    share, pgr = pgr_curve(confidence, weak_correct, strong_correct)
    o_share, o_pgr = pgr_curve(
        oracle_scores(weak_correct, strong_correct), weak_correct, strong_correct
    )
    conf = np.asarray(confidence, dtype=np.float64)
    keep = conf >= threshold
    weak = np.asarray(weak_correct, dtype=bool)
    strong = np.asarray(strong_correct, dtype=bool)
    acc = float(np.where(keep, weak, strong).mean())
    gap = float(strong.mean() - weak.mean())
    return {
        "threshold": threshold,
        "edge_share": float(keep.mean()),
        "accuracy": acc,
        "accuracy_share_of_full": acc / float(strong.mean()) if strong.any() else 0.0,
        "pgr": (acc - float(weak.mean())) / gap if gap > 0 else 0.0,
        "apgr": apgr(share, pgr),
        "cpt50": cpt(share, pgr, 0.5),
        "cpt80": cpt(share, pgr, 0.8),
        "random_apgr": 0.5,
        "random_cpt50": 0.5,
        "oracle_apgr": apgr(o_share, o_pgr),
        "oracle_cpt50": cpt(o_share, o_pgr, 0.5),
        "proxy_accuracy": float(weak.mean()),
        "full_accuracy": float(strong.mean()),
    }
