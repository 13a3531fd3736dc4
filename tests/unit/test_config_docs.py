"""docs/configuration.md lists every setting as the models define it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from shared.settings import CloudSettings, ComponentSettings, EdgeSettings

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "configuration.md"


def test_configuration_reference_is_up_to_date() -> None:
    """The generated tables match the models (else: run `make docs`)."""
    result = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "gen_config_docs.py"), "--check"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize(
    ("cls", "path"),
    [
        (EdgeSettings, ("runtime", "routing", "threshold")),
        (EdgeSettings, ("cloud", "tls", "ca_file")),
        (EdgeSettings, ("listen",)),
        (CloudSettings, ("engine", "max_batch_size")),
        (CloudSettings, ("tls", "client_ca_file")),
    ],
)
def test_reference_names_key_and_environment_variable(
    cls: type[ComponentSettings], path: tuple[str, ...]
) -> None:
    """Sample rows: the dotted key and its environment variable appear in the same row."""
    rows = [line for line in DOC.read_text(encoding="utf-8").splitlines() if line.startswith("|")]
    key, env = f"`{'.'.join(path)}`", f"`{cls.env_name(*path)}`"
    assert any(line.startswith(f"| {key} |") and env in line for line in rows)
