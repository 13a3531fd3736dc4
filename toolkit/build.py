"""Building a model pack: train the full model, distil the proxy, export, calibrate, evaluate.

A pack's default version names its content: the first 12 hex digits of a hash over the model
files (both models' weights, the ONNX proxy, the tokenizer). Training on another CPU takes other
kernels and gives other weights, so the same recipe built on two machines gives two versions,
never one version with two meanings. The recipe's hash is recorded in the manifest; a second
``autoglm models build`` of the same recipe finds that pack and reuses it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import torch

from cloud.model import weights
from cloud.model.gpt import GPT, GPTConfig
from shared.pack.manifest import (
    FORMAT,
    FullSpec,
    Manifest,
    PackError,
    ProxySpec,
    RoutingSpec,
    check_name,
    open_pack,
    read_manifest,
    seal,
    sha256_file,
)
from shared.tokenizer import ByteTokenizer
from toolkit import tasks
from toolkit.evaluate import calibrate, evaluate, proxy_decoder
from toolkit.export import export_onnx, quantize_int8
from toolkit.train import TrainConfig, train

log = logging.getLogger(__name__)

# Bump when the task suite or the build steps change in a way that changes the result.
TOOLKIT_VERSION = 2  # 2: the lean ONNX export (same weights, a shorter graph)


@dataclass(frozen=True)
class Recipe:
    name: str
    full: GPTConfig
    proxy: GPTConfig
    full_train: TrainConfig
    proxy_train: TrainConfig
    eval_per_cell: int  # calibration and test examples per (family, tier)
    families: tuple[str, ...] = tasks.IN_DISTRIBUTION  # what both models learn
    held_out: tuple[str, ...] = tasks.HELD_OUT  # what only the full model learns
    seed: int = 0
    max_new_tokens: int = 16  # longest answer in the suite is 10 characters + EOS
    default_accuracy_share: float = 0.99  # default threshold keeps 99% of the full model's accuracy

    def digest(self) -> str:
        blob = json.dumps({"toolkit": TOOLKIT_VERSION, **dataclasses.asdict(self)}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()


RECIPES: dict[str, Recipe] = {
    # For tests: small and fast, with the demo pack's quality shape on any CPU: a proxy good on
    # short inputs and worse on long ones, a full model ahead of it, the held-out family
    # escalated. Two families small models learn fast, and `max` held out (the fastest of all
    # to learn). fp32 (no bf16 autocast): fewer kernel differences between CPUs, at the same
    # speed for models this small. 1,600 full-model steps take it to the end of its learning
    # curve (100% on every tier), so the gap to the proxy does not depend on how one CPU's
    # kernels round (after 1,000 steps its `rev` tier 3 was 0-15% on an Intel Xeon with AMX).
    "quick": Recipe(
        name="quick",
        full=GPTConfig(n_layer=4, n_head=4, n_embd=64),
        proxy=GPTConfig(n_layer=3, n_head=3, n_embd=36),
        full_train=TrainConfig(steps=1600, bf16=False),
        proxy_train=TrainConfig(steps=2400, batch_size=64, seed=1, bf16=False),
        eval_per_cell=20,
        families=("shift", "rev"),
        held_out=("max",),
    ),
    # The demo pack: the targets in docs/models.md are measured on it.
    "demo": Recipe(
        name="demo",
        full=GPTConfig(n_layer=4, n_head=4, n_embd=96),
        proxy=GPTConfig(n_layer=3, n_head=3, n_embd=36),  # 1/8 of the full model's parameters
        full_train=TrainConfig(steps=3600),
        proxy_train=TrainConfig(steps=2400, seed=1),
        eval_per_cell=50,
    ),
}


def _link_latest(name_dir: Path, version: str) -> None:
    link = name_dir / "latest"
    tmp = name_dir / ".latest.tmp"
    tmp.unlink(missing_ok=True)
    tmp.symlink_to(version)
    os.replace(tmp, link)


def _valid(pack: Path) -> Path | None:
    """``pack`` when it exists and verifies; else None (a damaged one is rebuilt)."""
    if not pack.exists():
        return None
    try:
        open_pack(pack)
    except PackError as exc:
        log.warning("rebuilding %s: %s", pack, exc)
        return None
    return pack


def content_version(pack_dir: Path, files: list[str]) -> str:
    """12 hex digits of a SHA-256 over ``files`` (names and contents) of ``pack_dir``."""
    h = hashlib.sha256()
    for rel in sorted(files):
        h.update(f"{rel}\0{sha256_file(pack_dir / rel)}\n".encode())
    return h.hexdigest()[:12]


def find_built(name_dir: Path, recipe: Recipe) -> Path | None:
    """A verified pack in ``name_dir`` built from ``recipe`` (``latest`` first, else the newest).

    Candidates are picked by their manifests alone; only they are verified (every file hashed),
    in that order, until one holds."""
    if not name_dir.is_dir():
        return None
    latest = (name_dir / "latest").resolve() if (name_dir / "latest").is_symlink() else None
    found: list[tuple[bool, str, Path]] = []
    for pack in name_dir.iterdir():
        if pack.name.startswith(".") or pack.is_symlink() or not pack.is_dir():
            continue
        try:
            manifest = read_manifest(pack)
        except PackError:
            continue
        if manifest.build.get("recipe_sha256") == recipe.digest():
            found.append((pack.resolve() == latest, manifest.created, pack))
    for *_, pack in sorted(found, reverse=True):
        try:
            open_pack(pack)
            return pack
        except PackError as exc:
            log.warning("not reusing %s: %s", pack, exc)
    return None


def build_pack(
    recipe: Recipe, out_root: Path, version: str | None = None, force: bool = False
) -> Path:
    """Build (or reuse) ``<out_root>/<recipe.name>/<version>`` and point ``latest`` at it.

    Without ``version`` the pack is named by its content (:func:`content_version`) and a pack
    already built from the same recipe is reused; with it, a valid pack of that version is."""
    name_dir = out_root / check_name("name", recipe.name)
    if version is not None:
        check_name("version", version)
    if not force:
        reuse = find_built(name_dir, recipe) if version is None else _valid(name_dir / version)
        if reuse is not None:
            log.info("reusing %s (same recipe; --force rebuilds)", reuse)
            _link_latest(name_dir, reuse.name)
            return reuse
    name_dir.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=".build-", dir=name_dir))
    work.chmod(0o755)  # mkdtemp's 0700 would stay on the pack folder
    try:
        manifest = _build_into(work, recipe, version)
        dest = name_dir / manifest.version
        shutil.rmtree(dest, ignore_errors=True)
        work.rename(dest)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    _link_latest(name_dir, dest.name)
    log.info("built %s in %.0f s", dest, manifest.build["seconds"])
    return dest


def _build_into(work: Path, recipe: Recipe, version: str | None) -> Manifest:
    t0 = time.perf_counter()
    torch.manual_seed(recipe.seed)
    tok = ByteTokenizer()

    full = GPT(recipe.full)
    full_report = train(
        full, recipe.full_train, recipe.families + recipe.held_out, desc="full model"
    )
    torch.manual_seed(recipe.seed + 1)
    proxy = GPT(recipe.proxy)
    proxy_report = train(
        proxy, recipe.proxy_train, recipe.families, teacher=full, desc="proxy (distil)"
    )

    weights.save(full, work / "full.safetensors")
    weights.save(proxy, work / "proxy.safetensors")
    export_onnx(proxy, work / "proxy.onnx")
    (work / "tokenizer.json").write_text(json.dumps(tok.spec(), indent=2) + "\n")
    model_files = ["full.safetensors", "proxy.safetensors", "proxy.onnx", "tokenizer.json"]
    version = check_name("version", version or content_version(work, model_files))

    pc = recipe.proxy
    manifest = Manifest(
        name=recipe.name,
        version=version,
        created=datetime.now(UTC).isoformat(timespec="seconds"),
        full=FullSpec(
            weights="full.safetensors", config=recipe.full.to_dict(), params=full.num_params()
        ),
        proxy=ProxySpec(
            onnx="proxy.onnx",
            weights="proxy.safetensors",
            config=pc.to_dict(),
            params=proxy.num_params(),
            n_layer=pc.n_layer,
            n_head=pc.n_head,
            head_dim=pc.n_embd // pc.n_head,
            context_limit=pc.block_size,
        ),
        routing=RoutingSpec(default_threshold=0.5, max_new_tokens=recipe.max_new_tokens),
        build={
            "format": FORMAT,
            "recipe": dataclasses.asdict(recipe),
            "recipe_sha256": recipe.digest(),
            "train": {"full": full_report, "proxy": proxy_report},
            "torch": torch.__version__,
        },
        files={},
    )
    seal(work, manifest)

    table = calibrate(work, manifest)
    (work / "calibration.json").write_text(table.model_dump_json(indent=2) + "\n")
    point = table.for_min_accuracy_share(recipe.default_accuracy_share)
    manifest.routing.default_threshold = point.threshold

    # The int8 proxy always travels with its measured agreement; the edge uses it only when the
    # operator asks for it and the agreement is good enough (an edge setting).
    manifest.proxy.int8_agreement = _int8_agreement(work, manifest, recipe)
    log.info("int8 proxy: greedy token agreement with fp32 %.3f", manifest.proxy.int8_agreement)
    seal(work, manifest)

    report = evaluate(work, "test", recipe.eval_per_cell)
    (work / "evaluation.json").write_text(json.dumps(report, indent=2) + "\n")
    manifest.evaluation = {k: report[k] for k in ("split", "n", "params", "router", "held_out")}
    manifest.build["seconds"] = round(time.perf_counter() - t0, 1)
    seal(work, manifest)
    return manifest


def _int8_agreement(work: Path, manifest: Manifest, recipe: Recipe) -> float:
    """Quantise the proxy and measure greedy-token agreement with fp32 on calibration prompts."""
    quantize_int8(work / "proxy.onnx", work / "proxy.int8.onnx")
    manifest.proxy.onnx_int8 = "proxy.int8.onnx"
    tok = ByteTokenizer()
    fp32 = proxy_decoder(work, manifest)
    int8 = proxy_decoder(work, manifest, int8=True)
    same = total = 0
    suite = recipe.families + recipe.held_out
    for ex in tasks.dataset("calib", max(4, recipe.eval_per_cell // 4), recipe.seed, suite):
        a = fp32.generate(tok.encode(ex.prompt), recipe.max_new_tokens).token_ids
        b = int8.generate(tok.encode(ex.prompt), recipe.max_new_tokens).token_ids
        total += max(len(a), len(b))
        same += sum(x == y for x, y in zip(a, b, strict=False))
    return same / max(1, total)
