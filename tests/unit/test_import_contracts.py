"""The architecture's import contracts (``[tool.importlinter]`` in pyproject.toml) hold, and the
checker really fails when an import breaks one (shown on a copy of the tree with bad imports)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("autoglm_cli", "bench", "toolkit", "cloud", "edge", "shared")
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


def _lint(root: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(root)}  # the copy's packages, not the installed ones
    return subprocess.run(
        [str(LINT_IMPORTS), "--config", str(root / "pyproject.toml"), "--no-cache"],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def _copy_tree(dest: Path) -> Path:
    for name in PACKAGES:
        shutil.copytree(ROOT / name, dest / name, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", dest / "pyproject.toml")
    return dest


def test_the_repository_keeps_every_import_contract() -> None:
    r = _lint(ROOT)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "0 broken" in r.stdout


def test_an_edge_module_importing_the_cloud_breaks_the_layers(tmp_path: Path) -> None:
    tree = _copy_tree(tmp_path)
    router = tree / "edge" / "router.py"
    router.write_text(router.read_text() + "\nfrom cloud.engine import core  # noqa\n")
    r = _lint(tree)
    assert r.returncode == 1, r.stdout
    assert "edge.router -> cloud.engine" in r.stdout


def test_torch_in_the_edge_or_the_toolkit_in_the_engine_breaks_a_contract(tmp_path: Path) -> None:
    tree = _copy_tree(tmp_path)
    runner = tree / "edge" / "runner.py"
    runner.write_text(runner.read_text() + "\nimport torch  # noqa\n")
    core = tree / "cloud" / "engine" / "core.py"
    core.write_text(core.read_text() + "\nfrom toolkit import tasks  # noqa\n")
    r = _lint(tree)
    assert r.returncode == 1, r.stdout
    assert "The edge never imports torch BROKEN" in r.stdout
    assert "cloud.engine.core -> toolkit" in r.stdout
