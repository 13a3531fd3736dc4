"""Evaluation of a pack as it is deployed: the full model from its safetensors with torch, the
proxy from its ONNX file with the edge runner, on a split of the task suite.

Reports exact-match accuracy of both models per family and tier, and the confidence router's
metrics (PGR at the pack's default threshold, APGR, CPT) beside a random and an oracle router.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any

from cloud.model import weights
from edge.runner import OnnxDecoder
from shared.pack.manifest import Manifest, open_pack
from shared.routing import CalibrationTable, build_table, router_report
from shared.tokenizer import ByteTokenizer
from toolkit import tasks
from toolkit.generate import greedy


def proxy_decoder(
    pack_dir: Path, manifest: Manifest, int8: bool = False, threads: int = 0
) -> OnnxDecoder:
    """The pack's proxy on the edge runner (CPU here; GPU providers where available)."""
    eos = ByteTokenizer().eos_id
    return OnnxDecoder.from_pack(pack_dir, manifest, eos, int8=int8, intra_op_threads=threads)


def run_models(
    pack_dir: Path, manifest: Manifest, examples: list[tasks.Example]
) -> tuple[list[str], list[float], list[str]]:
    """Proxy answers, proxy confidences and full-model answers for ``examples``."""
    tok = ByteTokenizer()
    max_new = manifest.routing.max_new_tokens
    proxy = proxy_decoder(pack_dir, manifest)
    p_out, p_conf = [], []
    for ex in examples:
        r = proxy.generate(tok.encode(ex.prompt), max_new)
        p_out.append(tok.decode(r.token_ids))
        p_conf.append(r.confidence)
    full = weights.load(pack_dir / manifest.full.weights, manifest.full.config)
    f_out = [g.text for g in greedy(full, tok, [e.prompt for e in examples], max_new)]
    return p_out, p_conf, f_out


def _by_cell(examples: list[tasks.Example], correct: list[bool]) -> dict[str, dict[str, float]]:
    cells: dict[str, dict[str, list[bool]]] = defaultdict(lambda: defaultdict(list))
    for ex, ok in zip(examples, correct, strict=True):
        cells[ex.family][f"tier{ex.tier}"].append(ok)
    return {f: {t: sum(v) / len(v) for t, v in sorted(tiers.items())} for f, tiers in cells.items()}


def _mean(xs: list[bool]) -> float:
    return sum(xs) / len(xs) if xs else 0.0


def _suite(manifest: Manifest) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The families both models learned, and the held-out ones, of the pack's recipe."""
    r = manifest.build["recipe"]
    return tuple(r["families"]), tuple(r["held_out"])


def pack_examples(
    manifest: Manifest, split: tasks.Split, per_cell: int | None = None
) -> list[tasks.Example]:
    """The evaluation set of ``split`` for the pack's own task families and seed."""
    r = manifest.build["recipe"]
    families, held_out = _suite(manifest)
    return tasks.dataset(
        split, per_cell or int(r["eval_per_cell"]), int(r["seed"]), families + held_out
    )


def evaluate(
    pack_dir: Path | str, split: tasks.Split = "test", per_cell: int | None = None
) -> dict[str, Any]:
    """The full evaluation report of a pack on ``split`` (a JSON-ready dict)."""
    pack_dir = Path(pack_dir).resolve()
    manifest = open_pack(pack_dir)
    families, held_out = _suite(manifest)
    examples = pack_examples(manifest, split, per_cell)
    p_out, p_conf, f_out = run_models(pack_dir, manifest, examples)
    pc = [tasks.score(e, o) for e, o in zip(examples, p_out, strict=True)]
    fc = [tasks.score(e, o) for e, o in zip(examples, f_out, strict=True)]
    threshold = manifest.routing.default_threshold
    held = [i for i, e in enumerate(examples) if e.family in held_out]
    ind = [i for i, e in enumerate(examples) if e.family in families]
    return {
        "pack": f"{manifest.name}/{manifest.version}",
        "split": split,
        "n": len(examples),
        "params": {
            "full": manifest.full.params,
            "proxy": manifest.proxy.params,
            "ratio": manifest.proxy.params / manifest.full.params,
        },
        "accuracy": {
            "full": _by_cell(examples, fc),
            "proxy": _by_cell(examples, pc),
            "full_in_distribution": _mean([fc[i] for i in ind]),
            "proxy_in_distribution": _mean([pc[i] for i in ind]),
            "proxy_by_tier": {
                f"tier{t}": _mean([pc[i] for i in ind if examples[i].tier == t])
                for t in tasks.TIERS
            },
            "full_by_tier": {
                f"tier{t}": _mean([fc[i] for i in ind if examples[i].tier == t])
                for t in tasks.TIERS
            },
        },
        "router": router_report(p_conf, pc, fc, threshold),
        "calibration": _calibration_summary(pack_dir, manifest),
        "held_out": {
            "families": list(held_out),
            "escalated_share": _mean([p_conf[i] < threshold for i in held]),
        },
        "samples": [
            {
                "prompt": examples[i].prompt,
                "answer": examples[i].answer,
                "proxy": p_out[i],
                "confidence": round(p_conf[i], 4),
                "full": f_out[i],
            }
            for i in range(0, len(examples), max(1, len(examples) // 12))
        ],
    }


def _calibration_summary(pack_dir: Path, manifest: Manifest) -> list[dict[str, float]]:
    """The pack's calibration table at every 10% of edge share (the whole table is in the pack)."""
    path = pack_dir / manifest.calibration
    if not path.is_file():  # during the build, before calibration has run
        return []
    table = CalibrationTable.model_validate_json(path.read_text())
    rows: list[dict[str, float]] = []
    for share in [i / 10 for i in range(10, -1, -1)]:
        p = min(table.points, key=lambda q: (abs(q.edge_share - share), q.threshold))
        if not rows or rows[-1]["threshold"] != p.threshold:
            rows.append(p.model_dump())
    return rows


def calibrate(pack_dir: Path, manifest: Manifest) -> CalibrationTable:
    """The calibration table, measured on the calibration split (never on test)."""
    examples = pack_examples(manifest, "calib")
    p_out, p_conf, f_out = run_models(pack_dir, manifest, examples)
    return build_table(
        p_conf,
        [tasks.score(e, o) for e, o in zip(examples, p_out, strict=True)],
        [tasks.score(e, o) for e, o in zip(examples, f_out, strict=True)],
        split="calib",
    )
