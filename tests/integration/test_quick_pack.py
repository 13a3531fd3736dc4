"""The quick pack, built for real: ONNX against torch, quality shape, calibration, CLI."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from autoglm_cli import main
from cloud.model import weights
from shared.pack.manifest import PackError, open_pack
from shared.routing import CalibrationTable
from shared.tokenizer import ByteTokenizer
from toolkit import tasks
from toolkit.build import RECIPES, build_pack
from toolkit.evaluate import evaluate, proxy_decoder
from toolkit.generate import greedy

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def report(quick_pack: Path) -> dict:
    return evaluate(quick_pack)


def test_onnx_proxy_logits_match_torch_proxy(quick_pack: Path) -> None:
    """The exported graph computes the torch proxy's logits, prefill and cached steps alike."""
    m = open_pack(quick_pack)
    torch_proxy = weights.load(quick_pack / m.proxy.weights, m.proxy.config)
    onnx_proxy = proxy_decoder(quick_pack, m)
    tok = ByteTokenizer()
    ids = tok.encode("sort qwerty=ertqwy")
    n = len(ids)
    with torch.no_grad():
        ref, _ = torch_proxy(
            torch.tensor([ids]), torch.ones((1, n), dtype=torch.long), torch.arange(n).unsqueeze(0)
        )
    logits, past = onnx_proxy.forward(
        np.asarray([ids[:5]]),
        np.ones((1, 5), np.int64),
        np.arange(5)[None],
        onnx_proxy.empty_past(),
    )
    np.testing.assert_allclose(logits[0], ref[0, :5].numpy(), rtol=1e-4, atol=1e-4)
    for t in range(5, n):
        logits, past = onnx_proxy.forward(
            np.asarray([[ids[t]]]), np.ones((1, t + 1), np.int64), np.asarray([[t]]), past
        )
        np.testing.assert_allclose(logits[0, 0], ref[0, t].numpy(), rtol=1e-4, atol=1e-4)


def test_onnx_greedy_tokens_equal_torch_greedy(quick_pack: Path) -> None:
    """In fp32 the edge runner writes exactly the torch proxy's greedy answers."""
    m = open_pack(quick_pack)
    torch_proxy = weights.load(quick_pack / m.proxy.weights, m.proxy.config)
    onnx_proxy = proxy_decoder(quick_pack, m)
    tok = ByteTokenizer()
    prompts = [e.prompt for e in tasks.dataset("test", 4, 0, ("shift", "rev", "max"))]
    ref = greedy(torch_proxy, tok, prompts, m.routing.max_new_tokens)
    for p, g in zip(prompts, ref, strict=True):
        r = onnx_proxy.generate(tok.encode(p), m.routing.max_new_tokens)
        assert r.token_ids == g.token_ids, p
        assert r.confidence == pytest.approx(g.confidence, abs=1e-4)


def test_proxy_is_better_on_easy_tiers_and_full_model_on_hard_ones(report: dict) -> None:
    """The quality gap the router relies on: the proxy drops with difficulty, the full model
    stays ahead of it on the hardest tier."""
    acc = report["accuracy"]
    assert acc["proxy_by_tier"]["tier1"] >= acc["proxy_by_tier"]["tier3"] + 0.2
    assert acc["full_by_tier"]["tier3"] >= acc["proxy_by_tier"]["tier3"] + 0.2
    assert report["params"]["ratio"] < 0.3  # the demo recipe's 1/8 is checked in unit tests


def test_router_beats_random_and_escalates_held_out_family(report: dict) -> None:
    """Confidence ranks the proxy's mistakes better than chance; unknown tasks go to the cloud."""
    r = report["router"]
    assert r["apgr"] > r["random_apgr"] + 0.1
    assert r["cpt50"] < r["random_cpt50"]
    assert report["held_out"]["escalated_share"] >= 0.8


def test_eval_report_shows_the_calibration_table(report: dict) -> None:
    """The report carries the calibration table from 100% to 0% kept at the edge."""
    rows = report["calibration"]
    assert rows[0]["edge_share"] == 1.0 and rows[-1]["edge_share"] == 0.0
    assert [r["threshold"] for r in rows] == sorted(r["threshold"] for r in rows)


def test_calibration_table_holds_the_default_threshold(quick_pack: Path) -> None:
    """The default threshold is a calibration point that keeps 99% of the full model's accuracy."""
    m = open_pack(quick_pack)
    table = CalibrationTable.model_validate_json((quick_pack / m.calibration).read_text())
    assert table.split == "calib"
    point = next(p for p in table.points if p.threshold == m.routing.default_threshold)
    assert point.accuracy >= 0.99 * table.full_accuracy - 1e-9


def test_int8_variant_travels_with_its_measured_agreement(quick_pack: Path) -> None:
    """The int8 proxy is in the pack, hashed, with its agreement to fp32 recorded and plausible."""
    m = open_pack(quick_pack)
    assert m.proxy.onnx_int8 is not None and m.proxy.onnx_int8 in m.files
    assert m.proxy.int8_agreement is not None and 0.3 <= m.proxy.int8_agreement <= 1.0
    int8 = proxy_decoder(quick_pack, m, int8=True)
    assert int8.generate(ByteTokenizer().encode("rev abc="), 4).steps >= 1


def test_same_recipe_reuses_the_pack(quick_pack: Path) -> None:
    """A second build of the same recipe finds the verified pack instead of training again."""
    before = (quick_pack / "manifest.json").stat().st_mtime_ns
    again = build_pack(RECIPES["quick"], quick_pack.parent.parent)
    assert again == quick_pack
    assert (quick_pack / "manifest.json").stat().st_mtime_ns == before
    assert (quick_pack.parent / "latest").resolve() == quick_pack.resolve()


def test_damaged_copy_of_the_real_pack_is_refused(quick_pack: Path, tmp_path: Path) -> None:
    """Flipping one byte of the real weights makes loading fail, naming the file."""
    copy = tmp_path / "pack"
    shutil.copytree(quick_pack, copy)
    blob = bytearray((copy / "full.safetensors").read_bytes())
    blob[-1] ^= 0xFF
    (copy / "full.safetensors").write_bytes(bytes(blob))
    with pytest.raises(PackError, match=r"full\.safetensors"):
        evaluate(copy)


def test_cli_eval_json_and_list(quick_pack: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`autoglm models eval --json` prints the report; `models list` shows the pack."""
    assert main(["models", "eval", str(quick_pack), "--json", "--per-cell", "3"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["n"] == 3 * 3 * len(tasks.TIERS)  # 3 per cell, 3 families, 3 tiers
    assert main(["models", "list", str(quick_pack.parent.parent)]) == 0
    assert quick_pack.name in capsys.readouterr().out


def test_cli_eval_refuses_a_folder_that_is_not_a_pack(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A wrong path is a clear error and exit code 2, not a traceback."""
    assert main(["models", "eval", str(tmp_path)]) == 2
    assert "no manifest.json" in capsys.readouterr().err
