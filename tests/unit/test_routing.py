"""Router metrics (RouteLLM's PGR, APGR, CPT) and the calibration table."""

from __future__ import annotations

import numpy as np
import pytest

from shared.routing import apgr, build_table, cpt, oracle_scores, pgr_curve, router_report

# Six requests: the weak model fails the three it is least confident about; the strong is right.
CONF = [0.1, 0.2, 0.3, 0.8, 0.9, 0.95]
WEAK = [False, False, False, True, True, True]
STRONG = [True] * 6


def test_pgr_curve_runs_from_weak_to_strong() -> None:
    """PGR is 0 with no escalation and 1 with everything escalated."""
    share, pgr = pgr_curve(CONF, WEAK, STRONG)
    assert share[0] == 0.0 and share[-1] == 1.0
    assert pgr[0] == 0.0 and pgr[-1] == pytest.approx(1.0)


def test_perfectly_ranked_router_matches_the_oracle() -> None:
    """When confidence ranks the weak model's errors first, APGR and CPT equal the oracle's."""
    share, pgr = pgr_curve(CONF, WEAK, STRONG)
    o_share, o_pgr = pgr_curve(oracle_scores(WEAK, STRONG), WEAK, STRONG)
    assert apgr(share, pgr) == pytest.approx(apgr(o_share, o_pgr))
    assert cpt(share, pgr, 0.5) == pytest.approx(2 / 6)  # two of three errors fixed


def test_inverted_router_is_worse_than_random() -> None:
    """Escalating the confident requests first recovers nothing until the end."""
    share, pgr = pgr_curve([-c for c in CONF], WEAK, STRONG)
    assert apgr(share, pgr) < 0.5
    assert cpt(share, pgr, 0.5) > 0.5


def test_random_scores_average_near_half() -> None:
    """A random router's APGR is about 0.5."""
    rng = np.random.default_rng(0)
    weak = rng.random(4000) < 0.6
    strong = np.ones(4000, dtype=bool)
    share, pgr = pgr_curve(rng.random(4000).tolist(), weak.tolist(), strong.tolist())
    assert apgr(share, pgr) == pytest.approx(0.5, abs=0.05)


def test_router_report_at_threshold() -> None:
    """The report's operating point keeps requests at or above the threshold."""
    r = router_report(CONF, WEAK, STRONG, threshold=0.5)
    assert r["edge_share"] == 0.5
    assert r["accuracy"] == 1.0 and r["pgr"] == pytest.approx(1.0)
    assert r["oracle_apgr"] >= r["apgr"] - 1e-9


def test_calibration_table_and_targets() -> None:
    """The table resolves escalation and accuracy targets to thresholds."""
    table = build_table(CONF, WEAK, STRONG, split="calib")
    assert table.points[0].edge_share == 1.0 and table.points[-1].edge_share == 0.0
    assert [p.threshold for p in table.points] == sorted(p.threshold for p in table.points)
    at_most_half = table.for_max_escalation(0.5)
    assert 1 - at_most_half.edge_share <= 0.5 and at_most_half.accuracy == 1.0
    assert table.for_max_escalation(0.0).edge_share == 1.0
    best = table.for_min_accuracy_share(1.0)
    assert best.accuracy == 1.0 and best.edge_share == 0.5
    assert table.for_min_accuracy_share(0.5).edge_share == 1.0
