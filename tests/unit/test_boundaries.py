"""Import boundaries: the edge runs without torch; shared/ needs neither torch nor onnxruntime."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

# Importing a blocked module raises ImportError, as if the package were not installed.
_BLOCK = "import sys\nfor name in {blocked!r}: sys.modules[name] = None\n"


def _run(code: str, blocked: tuple[str, ...]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", _BLOCK.format(blocked=blocked) + code],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.mark.parametrize(
    "module",
    [
        "shared.tokenizer",
        "shared.pack.manifest",
        "shared.pack.fetch",
        "shared.routing",
        "shared.settings",
        "shared.rpc",
        "autoglm_cli",
    ],
)
def test_shared_imports_without_torch_or_onnxruntime(module: str) -> None:
    """Every shared module imports with torch and onnxruntime absent."""
    r = _run(f"import {module}", ("torch", "onnxruntime"))
    assert r.returncode == 0, r.stderr


@pytest.mark.parametrize("module", ["edge", "edge.runner"])
def test_edge_imports_without_torch(module: str) -> None:
    """The edge's modules import with torch absent."""
    r = _run(f"import {module}", ("torch",))
    assert r.returncode == 0, r.stderr


def test_models_build_without_torch_says_which_extra_to_install() -> None:
    """On a device (no torch), `autoglm models build` names the missing extra, no traceback."""
    r = _run(
        "from autoglm_cli import main\n"
        "raise SystemExit(main(['models', 'build', '--quick', '--out', '/nonexistent']))",
        ("torch",),
    )
    assert r.returncode == 2
    assert "open-autoglm[cloud]" in r.stderr


def test_models_list_works_without_torch(tmp_path: Path) -> None:
    """Listing packs needs no torch, so it works on a device."""
    r = _run(
        "from autoglm_cli import main\n"
        f"raise SystemExit(main(['models', 'list', {str(tmp_path)!r}]))",
        ("torch", "onnxruntime"),
    )
    assert r.returncode == 0, r.stderr
    assert "no packs" in r.stdout
