"""`autoglm bench train` runs, prints its table and writes JSON (a tiny run, not a timing test)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from autoglm_cli import main


def test_bench_train_writes_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Two steps per variant are enough to check the table and the JSON, not the speed."""
    assert main(["bench", "train", "--steps", "2", "--rounds", "1", "--out", str(tmp_path)]) == 0
    result = json.loads((tmp_path / "train.json").read_text())
    assert [r["job"] for r in result["rows"]] == ["full model (train)", "proxy (distil)"]
    assert all(r["fp32_ms"] > 0 and r["bf16_ms"] > 0 for r in result["rows"])
    assert "speed-up" in capsys.readouterr().out


def test_bench_cloud_compares_batching_and_counts_draft_savings(
    quick_pack: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A tiny run covers both engine modes at each level and reports draft savings."""
    argv = [
        "bench",
        "cloud",
        "--pack",
        str(quick_pack),
        "--levels",
        "1,2",
        "--per-stream",
        "2",
        "--per-cell",
        "2",
        "--out",
        str(tmp_path),
    ]
    assert main(argv) == 0
    result = json.loads((tmp_path / "cloud.json").read_text())
    assert [(r["streams"], r["batching"]) for r in result["rows"]] == [
        (1, True),
        (1, False),
        (2, True),
        (2, False),
    ]
    assert all(r["output_tokens"] > 0 and r["requests"] == 2 * r["streams"] for r in result["rows"])
    d = result["drafts"]
    assert d["decode_steps_saved_mean"] == pytest.approx(d["draft_tokens_accepted_mean"])
    assert "batching speed-up" in capsys.readouterr().out


def test_bench_overload_refuses_what_does_not_fit_at_each_nice_level(
    quick_pack: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Flooding two real servers (engine.nice 0 and 10) with 5x their queue bound: the overflow
    gets RESOURCE_EXHAUSTED, nothing gets another error, each level has its own row."""
    argv = ["bench", "overload", "--pack", str(quick_pack), "--queue-bound", "2"]
    argv += ["--factor", "5", "--max-batch", "1", "--nice", "0,10", "--out", str(tmp_path)]
    assert main(argv) == 0
    r = json.loads((tmp_path / "overload.json").read_text())
    assert [run["engine_nice"] for run in r["runs"]] == [0, 10]
    for run in r["runs"]:
        assert run["requests"] == r["floods"] * 10 and run["other_errors"] == []
        assert run["exhausted_to_health_p99_median"] > 0
        assert len(run["exhausted_p99_per_flood_ms"]) == r["floods"]
        assert run["exhausted_p99_per_flood_median_ms"] > 0
        assert run["ok"] >= 3 and run["resource_exhausted"] >= 1
        assert run["ok"] + run["resource_exhausted"] == run["requests"]
    out = capsys.readouterr().out
    assert "engine.nice 0:" in out and "engine.nice 10:" in out and "RESOURCE_EXHAUSTED" in out


def test_bench_edge_reports_daemon_overhead_kv_cache_and_int8(
    quick_pack: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A tiny run: the real daemon answers at the edge, the KV rows decode exactly 64 tokens the
    same way with and without the cache, and int8 is compared with fp32 (values, not speed)."""
    argv = ["bench", "edge", "--pack", str(quick_pack), "--rounds", "1", "--requests", "3"]
    assert main([*argv, "--out", str(tmp_path)]) == 0
    r = json.loads((tmp_path / "edge.json").read_text())
    d = r["daemon_overhead"]
    assert d["routes"] == {"ROUTE_EDGE": 3} and d["answers_identical"] == 1.0
    assert d["p50_ratio"] > 0 and d["in_process"]["p50_ms"] > 0 and d["daemon"]["p50_ms"] > 0
    assert d["long_answer"]["answers_identical"] == 1.0
    assert "CPUExecutionProvider" in d["providers"]["in_process"]
    random_rows, proxy_row = r["kv_cache"]["rows"][:2], r["kv_cache"]["rows"][2]
    assert [row["new_tokens"] for row in random_rows] == [64, 64]
    assert all(row["same_tokens_without_cache"] for row in r["kv_cache"]["rows"])
    assert all(row["speedup"] > 0 for row in r["kv_cache"]["rows"])
    assert proxy_row["prompt_tokens"] + proxy_row["new_tokens"] <= proxy_row["context_limit"]
    q = r["int8"]
    assert q["prompts"] == 3 and q["int8_speedup"] > 0
    assert 0 <= q["token_agreement"] <= 1 and 0 <= q["answer_agreement"] <= 1
    assert "KV cache" in capsys.readouterr().out


def test_overload_floor_script_times_refusals_with_the_engine_out_of_the_picture(
    quick_pack: Path, tmp_path: Path
) -> None:
    """bench/overload_floor.py (quoted in docs/benchmarks.md): its server refuses every
    Generate call (the script checks each code), and every row has one p99 per round."""
    script = Path(__file__).resolve().parents[2] / "bench" / "overload_floor.py"
    out = tmp_path / "floor.json"
    argv = ["--pack", str(quick_pack), "--burst", "8", "--rounds", "1", "--out", str(out)]
    run = subprocess.run(
        [sys.executable, str(script), *argv], capture_output=True, text=True, timeout=120
    )
    assert run.returncode == 0, run.stdout + run.stderr
    result = json.loads(out.read_text())
    rows = {k: v for k, v in result.items() if isinstance(v, dict)}
    clients = ["h2load", "python"] if shutil.which("h2load") else ["python"]
    assert sorted(rows) == sorted(
        f"{c} {call} core {state}"
        for c in clients
        for call in ("health", "refusal")
        for state in ("idle", "busy")
    )
    assert all(len(r["p99_ms"]) == 1 and r["p99_ms_median"] > 0 for r in rows.values())


@pytest.mark.parametrize(
    ("bench", "flag", "bad"),
    [("overload", "--nice", bad) for bad in ("0,x", "0,20", "10,10", "-1")]
    + [("fetch", "--limits", bad) for bad in ("x", "-1", "")],
)
def test_bench_refuses_bad_lists_of_levels_with_a_reason(
    bench: str, flag: str, bad: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """engine.nice levels (overload) and download limits (fetch) to compare side by side."""
    with pytest.raises(SystemExit) as exc:
        main(["bench", bench, flag, bad])
    assert exc.value.code == 2
    assert f"argument {flag}" in capsys.readouterr().err


def test_bench_fetch_compares_download_limits_side_by_side(
    quick_pack: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["bench", "fetch", "--pack", str(quick_pack), "--limits", "0,16", "--calls", "3"]
    assert main([*argv, "--rounds", "1", "--out", str(tmp_path)]) == 0
    r = json.loads((tmp_path / "fetch.json").read_text())
    assert [row["fetch_max_mib_s"] for row in r["rows"]] == [0.0, 16.0]
    assert all(row["generate_p50_ms_alone"] > 0 and row["slowdown"] > 0 for row in r["rows"])
    assert "beside download" in capsys.readouterr().out
