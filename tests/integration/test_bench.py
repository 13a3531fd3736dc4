"""`autoglm bench train` runs, prints its table and writes JSON (a tiny run, not a timing test)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from shared.cli import main


def test_bench_train_writes_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Two steps per variant are enough to check the table and the JSON, not the speed."""
    assert main(["bench", "train", "--steps", "2", "--rounds", "1", "--out", str(tmp_path)]) == 0
    result = json.loads((tmp_path / "train.json").read_text())
    assert [r["job"] for r in result["rows"]] == ["full model (train)", "proxy (distil)"]
    assert all(r["fp32_ms"] > 0 and r["bf16_ms"] > 0 for r in result["rows"])
    assert "speed-up" in capsys.readouterr().out
