"""`autoglm bench hybrid` and `autoglm demo` run the whole system on loopback (tiny runs that
check behaviour and outputs, not speed)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from autoglm_cli import main

MODES = ["all-edge", "all-cloud", "hybrid"]


def _children_of(marker: str) -> list[str]:
    """Command lines of live processes that mention ``marker`` (a run's private folder)."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if marker in cmdline and "pytest" not in cmdline:
            found.append(cmdline)
    return found


@pytest.mark.parametrize(
    "load", [["--load", "closed", "--concurrency", "3"], ["--load", "open", "--rate", "40"]]
)
def test_bench_hybrid_runs_the_workload_three_ways_and_survives_the_cloud_killed(
    quick_pack: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], load: list[str]
) -> None:
    """Every request answered in every mode, routes as the mode asks, the cloud-killed phase
    without failures, and the JSON, request log and plots written."""
    argv = ["bench", "hybrid", "--pack", str(quick_pack), "--requests", "24", "--rounds", "2"]
    argv += ["--rtt-ms", "20", "--out", str(tmp_path), "--json", "--no-progress", *load]
    assert main(argv) == 0
    printed = json.loads(capsys.readouterr().out)
    report = json.loads((tmp_path / "hybrid.json").read_text())
    assert printed["modes"] == report["modes"]
    modes = report["modes"]
    assert list(modes) == MODES
    assert all(m["requests"] == 24 and m["failed"] == 0 for m in modes.values())
    assert modes["all-edge"]["routes"] == {"EDGE": 24}
    assert modes["all-cloud"]["routes"] == {"CLOUD": 24}
    assert set(modes["hybrid"]["routes"]) <= {"EDGE", "CLOUD"}
    assert modes["hybrid"]["routes"].get("CLOUD", 0) > 0, "the held-out family escalates"
    killed = report["cloud_killed"]
    assert killed["failed"] == 0 and killed["routes"].get("EDGE_FALLBACK", 0) > 0
    assert report["targets"]["failures_with_cloud_killed"]["met"] is True
    assert {"pgr", "apgr", "cpt50", "oracle_apgr"} <= set(report["routing"])
    lines = (tmp_path / "hybrid-requests.jsonl").read_text().splitlines()
    assert len(lines) == 3 * 24 + 24
    for name in ("hybrid-routing.png", "hybrid-latency.png"):
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_bench_hybrid_prints_a_table_with_every_target(
    quick_pack: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Without --json: the mode table, the routing metrics and one verdict per target."""
    argv = ["bench", "hybrid", "--pack", str(quick_pack), "--requests", "12", "--rounds", "1"]
    argv += ["--rtt-ms", "10", "--out", str(tmp_path), "--no-kill-cloud", "--no-progress"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    for text in (*MODES, "APGR", "CPT(50%)", "targets:", "not measured", "written:"):
        assert text in out, text
    assert json.loads((tmp_path / "hybrid.json").read_text())["cloud_killed"] is None


def _demo(quick_pack: Path, out: Path) -> subprocess.Popen[str]:
    argv = [sys.executable, "-m", "autoglm_cli", "demo", "--pack", str(quick_pack)]
    argv += ["--requests", "18", "--rtt-ms", "20", "--out", str(out)]
    return subprocess.Popen(
        argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=out.parent
    )


def test_demo_runs_end_to_end_and_stops_everything_it_started(
    quick_pack: Path, tmp_path: Path
) -> None:
    """Broker, cloud, two edges, a fleet push applied by both, three modes, the cloud killed,
    the summary and outputs; no process of the run is left behind."""
    out = tmp_path / "demo"
    out.mkdir()
    proc = _demo(quick_pack, out)
    stdout, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, stdout
    assert stdout.count("  200  applied") == 2, stdout
    for text in ("sample answers", "edge share:", "cloud calls saved:", "0 of 18 requests failed",
                 "fleet demo: 2 device(s), 2 online"):  # fmt: skip
        assert text in stdout, text
    report = json.loads((out / "demo.json").read_text())
    assert list(report["modes"]) == MODES
    assert report["cloud_killed"]["failed"] == 0
    assert (out / "demo-routing.png").exists() and (out / "demo-latency.png").exists()
    assert _children_of(str(out)) == []


def test_demo_interrupted_stops_everything_it_started(quick_pack: Path, tmp_path: Path) -> None:
    """Ctrl-C (SIGINT) in the middle: exit code 130 and no process of the run left."""
    out = tmp_path / "demo"
    out.mkdir()
    proc = _demo(quick_pack, out)
    assert proc.stdout is not None
    seen = []
    for line in proc.stdout:
        seen.append(line)
        if line.startswith("edge-b") and "serving" in line:
            break
    else:
        pytest.fail("".join(seen))
    os.kill(proc.pid, signal.SIGINT)
    rest, _ = proc.communicate(timeout=60)
    assert proc.returncode == 130, "".join(seen) + rest
    assert "interrupted" in rest
    deadline = time.monotonic() + 10
    while _children_of(str(out)) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _children_of(str(out)) == []
