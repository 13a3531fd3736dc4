"""PNG plots of a hybrid run: the routing curve and the latency distributions (matplotlib, Agg).

matplotlib comes with the ``bench`` extra; without it the reports still print and write JSON,
and ``write_plots`` says how to get the pictures.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from shared.routing import oracle_scores, pgr_curve


def _accuracy_curve(
    confidence: Sequence[float], weak: Sequence[bool], strong: Sequence[bool]
) -> tuple[np.ndarray, np.ndarray]:
    """(share of requests sent to the cloud, accuracy of the mix) escalating least confident
    first."""
    share, pgr = pgr_curve(confidence, weak, strong)
    w, s = float(np.mean(weak)), float(np.mean(strong))
    if s == w:  # no gap: PGR is undefined and the curve is flat
        return share, np.full_like(share, w)
    return share, w + pgr * (s - w)


def write_plots(
    out_dir: Path,
    *,
    confidence: Sequence[float],
    edge_correct: Sequence[bool],
    cloud_correct: Sequence[bool],
    hybrid_point: tuple[float, float],
    latencies_ms: Mapping[str, Sequence[float]],
    title: str,
    prefix: str = "hybrid",
) -> list[Path] | str:
    """Writes ``<prefix>-routing.png`` and ``<prefix>-latency.png``; returns their paths, or a
    reason when matplotlib is missing."""
    try:
        import matplotlib

        logging.getLogger("matplotlib").setLevel(logging.WARNING)  # font cache notices
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ModuleNotFoundError:
        return "no plots: matplotlib is not installed (pip install 'open-autoglm[bench]')"
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [out_dir / f"{prefix}-routing.png", out_dir / f"{prefix}-latency.png"]

    fig, ax = plt.subplots(figsize=(6.4, 4.8))
    share, acc = _accuracy_curve(confidence, edge_correct, cloud_correct)
    ax.plot(share, acc, label="confidence router (this proxy)", color="tab:blue")
    o_share, o_acc = _accuracy_curve(
        oracle_scores(edge_correct, cloud_correct), edge_correct, cloud_correct
    )
    ax.plot(o_share, o_acc, label="oracle router", color="tab:green", linestyle="--")
    w, s = float(np.mean(edge_correct)), float(np.mean(cloud_correct))
    ax.plot([0, 1], [w, s], label="random router", color="gray", linestyle=":")
    ax.scatter([hybrid_point[0]], [hybrid_point[1]], color="tab:red", zorder=3)
    ax.annotate(
        "hybrid, measured",
        hybrid_point,
        textcoords="offset points",
        xytext=(8, -14),
        color="tab:red",
    )
    ax.set_xlabel("share of requests sent to the cloud")
    ax.set_ylabel("accuracy (exact match)")
    ax.set_title(f"Routing curve: {title}", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(paths[0], dpi=120)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(6.4, 4.8))
    for label, values in latencies_ms.items():
        if not values:
            continue
        xs = np.sort(np.asarray(values, dtype=np.float64))
        ax.step(xs, np.arange(1, xs.size + 1) / xs.size, where="post", label=label)
    ax.set_xscale("log")
    ax.set_xlabel("latency seen by the app (ms, log scale)")
    ax.set_ylabel("share of requests answered within")
    ax.set_title(f"Latency distributions: {title}", fontsize=10)
    ax.grid(alpha=0.3, which="both")
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(paths[1], dpi=120)
    plt.close(fig)
    return paths
