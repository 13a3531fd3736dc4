"""``autoglm bench hybrid``: one workload three ways (all-edge, all-cloud, hybrid) in one run.

The real system on loopback: the cloud service (full model), an edge daemon (proxy) reaching it
through an emulated WAN (``bench.stack.wan.DelayProxy``: added round-trip time and jitter), and the
workload sent to the edge as an app sends it, with a route preference per request:

- all-edge  = ``edge_only``: the proxy answers everything;
- all-cloud = ``cloud_only``: every request crosses the WAN to the full model;
- hybrid    = ``auto``: the proxy answers when confident, escalates (with its draft) otherwise.

The workload is cut into rounds and each round runs the three modes back to back in a rotating
order, so that a noisy neighbour slows all three alike. The routing curve (accuracy against the
share of requests sent to the cloud, with random and oracle routers) comes from the all-edge
confidences and the two models' per-request correctness; PGR, APGR and CPT(50%) follow RouteLLM
(see ``shared.routing``). A last phase kills the cloud (SIGKILL) and sends the hybrid workload
again: under the default fallback policy no request may fail.
"""

from __future__ import annotations

import json
import platform
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from bench import workload as wl
from bench.plots import write_plots
from bench.stack.loopback import Stack
from shared.pack.manifest import read_manifest
from shared.routing import router_report

# The targets of the hybrid system (docs/benchmarks.md), measured with 50 ms round-trip time.
TARGETS = {
    "hybrid_accuracy_share_of_cloud_min": 0.98,
    "hybrid_cloud_share_max": 0.50,
    "hybrid_mean_latency_ratio_max": 0.5,
    "edge_p50_ratio_max": 0.2,
    "failures_with_cloud_killed": 0,
}
KILLED_PHASE_MAX = 200  # requests sent with the cloud killed


def edge_toml(threshold: float | None) -> str:
    """The edges' settings for a measurement: no answer cache (every request is decoded, also
    when the workload is sent again), and the threshold when one is given."""
    routing = "" if threshold is None else f"[runtime.routing]\nthreshold = {threshold!r}\n\n"
    return routing + "[runtime.cache]\nenabled = false\n"


class Progress:
    """A tqdm bar on stderr over every request of the run (silent when ``enabled`` is false)."""

    def __init__(self, total: int, enabled: bool) -> None:
        self._bar: Any = None
        if enabled:
            from tqdm import tqdm

            self._bar = tqdm(total=total, unit="req", file=sys.stderr, dynamic_ncols=True)

    def phase(self, text: str) -> None:
        if self._bar is not None:
            self._bar.set_description(text)

    def done(self, _: wl.Outcome) -> None:
        if self._bar is not None:
            self._bar.update(1)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()


def run_three_ways(
    addresses: list[str],
    examples: list[Any],
    load: wl.Load,
    rounds: int,
    max_new_tokens: int,
    progress: Progress,
) -> tuple[dict[str, list[wl.Outcome]], dict[str, float]]:
    """Every example in every mode, round by round in rotating order; outcomes per mode in
    workload order and wall time per mode."""
    outcomes: dict[str, list[wl.Outcome]] = {m: [] for m in wl.MODES}
    walls: dict[str, float] = dict.fromkeys(wl.MODES, 0.0)
    chunks = [c.tolist() for c in np.array_split(np.arange(len(examples)), max(1, rounds))]
    for r, chunk in enumerate(chunks):
        order = wl.MODES[r % 3 :] + wl.MODES[: r % 3]
        for mode in order:
            progress.phase(f"round {r + 1}/{len(chunks)} {wl.LABELS[mode]}")
            got, wall = wl.run(
                addresses,
                examples,
                mode,
                load,
                max_new_tokens=max_new_tokens,
                indices=chunk,
                on_done=progress.done,
            )
            outcomes[mode] += got
            walls[mode] += wall
    for mode in wl.MODES:
        outcomes[mode].sort(key=lambda o: o.index)
    return outcomes, walls


def judge(summary: dict[str, Any], killed: dict[str, Any] | None) -> dict[str, Any]:
    """Each target: the measured value, the bound, and whether it is met."""
    cloud, hybrid = summary["cloud_only"], summary["auto"]
    edge_routed = hybrid["latency_ms_by_route"].get("EDGE", {}).get("p50")
    rows = {
        "hybrid_accuracy_share_of_cloud_min": hybrid["accuracy"] / cloud["accuracy"]
        if cloud["accuracy"]
        else 0.0,
        "hybrid_cloud_share_max": hybrid["cloud_share"],
        "hybrid_mean_latency_ratio_max": hybrid["latency_ms"]["mean"] / cloud["latency_ms"]["mean"],
        "edge_p50_ratio_max": (edge_routed or float("nan")) / cloud["latency_ms"]["p50"],
        "failures_with_cloud_killed": None if killed is None else killed["failed"],
    }
    out = {}
    for key, value in rows.items():
        bound = TARGETS[key]
        if value is None:
            met = None
        elif key.endswith("_min"):
            met = value >= bound
        else:
            met = value <= bound
        out[key] = {"value": value, "bound": bound, "met": met}
    return out


def bench_hybrid(
    pack: Path,
    workdir: Path,
    *,
    requests: int = 600,
    rounds: int = 3,
    load: wl.Load | None = None,
    rtt_ms: float = 50.0,
    jitter_ms: float = 5.0,
    threshold: float | None = None,
    kill_cloud: bool = True,
    seed: int = 0,
    show_progress: bool = True,
    say: Callable[[str], None] = lambda _: None,
) -> tuple[dict[str, Any], dict[str, list[wl.Outcome]]]:
    """The measurement; returns the report and every request's outcome per phase."""
    load = load or wl.Load()
    manifest = read_manifest(pack.resolve())
    threshold = manifest.routing.default_threshold if threshold is None else threshold
    max_new = manifest.routing.max_new_tokens
    examples = wl.make_workload(requests, seed)
    killed_n = min(requests, KILLED_PHASE_MAX) if kill_cloud else 0
    progress = Progress(3 * requests + killed_n, show_progress)
    stack = Stack(
        pack, workdir, rtt_ms=rtt_ms, jitter_ms=jitter_ms, edge_toml=edge_toml(threshold), say=say
    )
    try:
        with stack:
            progress.phase("warm-up")
            for mode in wl.MODES:  # first calls pay for channels, sessions and caches
                wl.run(stack.edge_addresses, examples, mode, load, max_new_tokens=max_new,
                       indices=range(min(8, requests)))  # fmt: skip
            outcomes, walls = run_three_ways(
                stack.edge_addresses, examples, load, rounds, max_new, progress
            )
            killed: list[wl.Outcome] = []
            killed_wall = 0.0
            if kill_cloud:
                assert stack.cloud is not None
                stack.cloud.kill()
                progress.phase("hybrid, cloud killed")
                killed, killed_wall = wl.run(
                    stack.edge_addresses, examples, "auto", load, max_new_tokens=max_new,
                    indices=range(killed_n), on_done=progress.done,
                )  # fmt: skip
    finally:
        progress.close()
    summary: dict[str, Any] = {m: wl.summarize(outcomes[m], walls[m]) for m in wl.MODES}
    killed_summary = wl.summarize(killed, killed_wall) if kill_cloud else None
    edge_out, cloud_out = outcomes["edge_only"], outcomes["cloud_only"]
    routing = router_report(
        [o.confidence for o in edge_out],
        [o.correct for o in edge_out],
        [o.correct for o in cloud_out],
        threshold,
    )
    report: dict[str, Any] = {
        "bench": "hybrid",
        "pack": f"{manifest.name}/{manifest.version}",
        "workload": {
            "requests": requests,
            "seed": seed,
            "split": "test",
            "families": "every family (held-out count included), tiers 1-3, uniform",
            "max_new_tokens": max_new,
        },
        "load": load.describe(),
        "wan": {"rtt_ms": rtt_ms, "jitter_ms": jitter_ms},
        "rounds": rounds,
        "threshold": threshold,
        "modes": {wl.LABELS[m]: summary[m] for m in wl.MODES},
        "routing": routing,
        "cloud_killed": killed_summary,
        "targets": judge(summary, killed_summary),
        "machine": {
            "cpu": platform.processor() or platform.machine(),
            "python": platform.python_version(),
        },
    }
    phases = {wl.LABELS[m]: outcomes[m] for m in wl.MODES}
    if kill_cloud:
        phases["hybrid, cloud killed"] = killed
    return report, phases


def write_outputs(
    report: dict[str, Any], phases: dict[str, list[wl.Outcome]], out: Path, prefix: str
) -> list[str]:
    """JSON report, JSON lines of every request, and the plots; returns what was written."""
    out.mkdir(parents=True, exist_ok=True)
    edge, cloud = phases["all-edge"], phases["all-cloud"]
    hybrid = report["modes"]["hybrid"]
    plots = write_plots(
        out,
        confidence=[o.confidence for o in edge],
        edge_correct=[o.correct for o in edge],
        cloud_correct=[o.correct for o in cloud],
        hybrid_point=(hybrid["cloud_share"], hybrid["accuracy"]),
        latencies_ms={k: [o.latency_ms for o in v if o.ok] for k, v in phases.items()},
        title=f"{report['pack']} ({prefix}), +{report['wan']['rtt_ms']:g} ms RTT",
        prefix=prefix,
    )
    written = [str(p) for p in plots] if isinstance(plots, list) else []
    report["plots"] = written or plots  # the paths, or why there are none
    path = out / f"{prefix}.json"
    path.write_text(json.dumps(report, indent=2) + "\n")
    records = out / f"{prefix}-requests.jsonl"
    with records.open("w") as f:
        for phase, outcomes in phases.items():
            for rec in wl.as_records(outcomes):
                f.write(json.dumps({"phase": phase, **rec}) + "\n")
    return [str(path), str(records), *written]


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}ms"


def mode_table(modes: dict[str, dict[str, Any]]) -> list[str]:
    """One line per mode: accuracy, routes, failures, latency, throughput."""
    lines = [
        f"{'mode':<22} {'accuracy':>8} {'at edge':>8} {'to cloud':>8} {'failed':>6} "
        f"{'mean':>8} {'p50':>8} {'p95':>8} {'p99':>8} {'req/s':>7}"
    ]
    for name, s in modes.items():
        lat = s["latency_ms"]
        lines.append(
            f"{name:<22} {s['accuracy']:>8.1%} {s['edge_share']:>8.1%} {s['cloud_share']:>8.1%} "
            f"{s['failed']:>6} {_ms(lat['mean']):>8} {_ms(lat['p50']):>8} {_ms(lat['p95']):>8} "
            f"{_ms(lat['p99']):>8} {s['throughput_rps']:>7.1f}"
        )
    return lines


def route_lines(name: str, s: dict[str, Any]) -> list[str]:
    """Latency per route of one mode's answers."""
    out = []
    for route, lat in sorted(s["latency_ms_by_route"].items()):
        out.append(
            f"  {name} answered by {route:<13} {s['routes'][route]:>5} requests  "
            f"p50 {_ms(lat['p50']):>8}  p95 {_ms(lat['p95']):>8}  p99 {_ms(lat['p99']):>8}"
        )
    return out


_TARGET_TEXT = {
    "hybrid_accuracy_share_of_cloud_min": ("hybrid accuracy / all-cloud accuracy", ">=", "%"),
    "hybrid_cloud_share_max": ("hybrid share of requests sent to the cloud", "<=", "%"),
    "hybrid_mean_latency_ratio_max": ("hybrid mean latency / all-cloud mean", "<=", "x"),
    "edge_p50_ratio_max": ("p50 of edge-answered requests / all-cloud p50", "<=", "x"),
    "failures_with_cloud_killed": ("failed requests with the cloud killed", "<=", ""),
}


def format_report(report: dict[str, Any]) -> str:
    w = report["wan"]
    lines = [
        f"hybrid bench on {report['pack']}: {report['workload']['requests']} requests "
        f"({report['workload']['families']}), {report['load']}, {report['rounds']} rounds",
        f"emulated WAN between edge and cloud: +{w['rtt_ms']:g} ms round trip, "
        f"jitter {w['jitter_ms']:g} ms; threshold {report['threshold']:.3f}",
        "",
        *mode_table(report["modes"]),
        "",
        *route_lines("hybrid", report["modes"]["hybrid"]),
    ]
    r = report["routing"]
    lines += [
        "",
        f"routing (from the all-edge confidences and both models' answers): at this threshold "
        f"PGR {r['pgr']:.2f}; APGR {r['apgr']:.3f} (random {r['random_apgr']:.2f}, oracle "
        f"{r['oracle_apgr']:.3f}); CPT(50%) {r['cpt50']:.1%} of requests to the cloud "
        f"(random {r['random_cpt50']:.0%}, oracle {r['oracle_cpt50']:.1%})",
    ]
    k = report["cloud_killed"]
    if k is not None:
        routes = ", ".join(f"{n} {route}" for route, n in sorted(k["routes"].items()))
        lines.append(
            f"cloud killed (SIGKILL), hybrid again: {k['requests']} requests, {k['failed']} "
            f"failed; routes: {routes}; p50 {_ms(k['latency_ms']['p50'])}, "
            f"p99 {_ms(k['latency_ms']['p99'])}"
        )
    lines += ["", "targets:"]
    for key, t in report["targets"].items():
        text, op, unit = _TARGET_TEXT[key]
        value, bound = t["value"], t["bound"]
        if value is None:
            shown, verdict = "not measured", "-"
        else:
            shown = {"%": f"{value:.1%}", "x": f"{value:.2f}x"}.get(unit, f"{value:g}")
            verdict = "met" if t["met"] else "MISSED"
        want = f"{bound:.0%}" if unit == "%" else f"{bound:g}{unit}"
        lines.append(f"  {text:<48} {shown:>9}  (target {op} {want}): {verdict}")
    return "\n".join(lines)
