"""``autoglm models build|eval|list``."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from shared.pack.manifest import PackError, list_packs


def register(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", required=True, metavar="ACTION")

    b = sub.add_parser("build", help="train, distil, export and calibrate a pack")
    b.add_argument(
        "--out", type=Path, required=True, help="packs folder (pack lands in OUT/NAME/VERSION)"
    )
    b.add_argument(
        "--quick", action="store_true", help="the small pack used by the tests (< 2 min)"
    )
    b.add_argument(
        "--version",
        help="pack version (default: a hash of the model files; a pack of the same recipe is "
        "reused)",
    )
    b.add_argument("--force", action="store_true", help="rebuild even if the pack exists")
    b.set_defaults(handler=_build)

    e = sub.add_parser("eval", help="evaluate a pack on the test split")
    e.add_argument("pack", type=Path, help="a pack version folder (or its `latest` link)")
    e.add_argument("--json", action="store_true", help="print the whole report as JSON")
    e.add_argument("--split", choices=["test", "calib"], default="test")
    e.add_argument(
        "--per-cell", type=int, help="examples per family and tier (default: the pack's)"
    )
    e.set_defaults(handler=_eval)

    ls = sub.add_parser("list", help="list the packs in a folder")
    ls.add_argument("root", type=Path, help="packs folder")
    ls.set_defaults(handler=_list)


def _build(args: argparse.Namespace) -> int:
    from toolkit.build import RECIPES, build_pack

    recipe = RECIPES["quick" if args.quick else "demo"]
    try:
        dest = build_pack(recipe, args.out, version=args.version, force=args.force)
    except PackError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(dest)
    return 0


def _pct(x: float) -> str:
    return f"{100 * x:5.1f}%"


def _print_report(r: dict[str, Any]) -> None:
    acc = r["accuracy"]
    print(f"pack {r['pack']}  split={r['split']}  n={r['n']}")
    p = r["params"]
    print(f"params: full {p['full']:,}  proxy {p['proxy']:,}  (proxy/full = {p['ratio']:.3f})\n")
    print(f"{'family':<8} {'tier':<6} {'full':>7} {'proxy':>7}")
    for family, tiers in acc["full"].items():
        for tier, value in tiers.items():
            print(f"{family:<8} {tier:<6} {_pct(value):>7} {_pct(acc['proxy'][family][tier]):>7}")
    print(
        f"\nin-distribution families: full {_pct(acc['full_in_distribution'])}, "
        f"proxy {_pct(acc['proxy_in_distribution'])}"
    )
    tiers = "  ".join(f"{t} {_pct(v)}" for t, v in acc["proxy_by_tier"].items())
    print(f"proxy by tier (in-distribution): {tiers}")
    if r["calibration"]:
        print(
            "\ncalibration table (calibration split): threshold -> kept at the edge, mix accuracy"
        )
        for p in r["calibration"]:
            print(f"  {p['threshold']:>8.4f}  {_pct(p['edge_share'])}  {_pct(p['accuracy'])}")
    rt = r["router"]
    print(f"\nconfidence router at the default threshold {rt['threshold']:.4f}:")
    print(
        f"  kept at the edge {_pct(rt['edge_share'])}, accuracy {_pct(rt['accuracy'])} "
        f"= {_pct(rt['accuracy_share_of_full'])} of the full model's, PGR {rt['pgr']:.3f}"
    )
    print(f"{'router':<12} {'APGR':>6} {'CPT(50%)':>9}")
    print(f"{'confidence':<12} {rt['apgr']:>6.3f} {_pct(rt['cpt50']):>9}")
    print(f"{'random':<12} {rt['random_apgr']:>6.3f} {_pct(rt['random_cpt50']):>9}")
    print(f"{'oracle':<12} {rt['oracle_apgr']:>6.3f} {_pct(rt['oracle_cpt50']):>9}")
    print(f"\nheld-out family escalated: {_pct(r['held_out']['escalated_share'])}")
    print("\nsamples (prompt -> proxy [confidence] | full):")
    for s in r["samples"]:
        mark = "ok " if s["proxy"] == s["answer"] else "BAD"
        proxy = f"{s['proxy']!r:<14} [{s['confidence']:.3f}] {mark}"
        print(f"  {s['prompt']:<22} -> {proxy} | {s['full']!r}")


def _eval(args: argparse.Namespace) -> int:
    from toolkit.evaluate import evaluate

    try:
        report = evaluate(args.pack, args.split, args.per_cell)
    except PackError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        _print_report(report)
    return 0


def _list(args: argparse.Namespace) -> int:
    rows = list_packs(args.root)
    if not rows:
        print(f"no packs under {args.root}")
        return 0
    print(f"{'name':<10} {'version':<14} {'created':<26} {'proxy':>8} {'full':>9} {'threshold':>9}")
    for path, m in rows:
        if isinstance(m, PackError):
            print(f"{path.parent.name:<10} {path.name:<14} unreadable: {m}")
            continue
        print(
            f"{m.name:<10} {m.version:<14} {m.created:<26} {m.proxy.params:>8,} "
            f"{m.full.params:>9,} {m.routing.default_threshold:>9.4f}"
        )
    return 0
