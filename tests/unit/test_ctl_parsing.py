"""``autoglm ctl`` without a broker: building desired documents, parsing the command line."""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import pytest

from autoglm_cli import build_parser
from cloud.ctl.config import (
    changes_of,
    choose_version,
    leaf_keys,
    report_line,
    set_dotted,
    unset_dotted,
)
from cloud.ctl.options import parse_value
from cloud.ctl.session import CtlError
from shared.control import ReportedConfig

ROOT = Path(__file__).resolve().parents[2]


def set_args(*argv: str) -> argparse.Namespace:
    return build_parser(["ctl"]).parse_args(["ctl", "config", "set", *argv])


@pytest.mark.parametrize(
    ("text", "value"),
    [("0.5", 0.5), ("3", 3), ("false", False), ("null", None), ('"0.5"', "0.5"), ("fail", "fail")],
)
def test_values_are_json_when_they_parse_else_plain_strings(text: str, value: object) -> None:
    assert parse_value(text) == value


def test_dotted_keys_build_nested_tables_and_unset_removes_one_key() -> None:
    """routing.threshold=... and routing.mode=... share one table; --unset drops a leaf."""
    doc: dict = {}
    set_dotted(doc, "routing.threshold", 0.5)
    set_dotted(doc, "routing.mode", "auto")
    assert doc == {"routing": {"threshold": 0.5, "mode": "auto"}}
    assert leaf_keys(doc) == ["routing.threshold", "routing.mode"]
    unset_dotted(doc, "routing.mode")
    assert doc == {"routing": {"threshold": 0.5}}


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["routing..threshold=1"], "invalid key"),
        (["routing=1", "routing.threshold=1"], "is not a table"),
        (["routing.threshold"], "expected KEY=VALUE"),
        (["version=3"], "--version N"),
        ([], "nothing to set"),
        (["cache.enabled=true", "--version", "0"], "integer >= 1"),
    ],
)
def test_bad_command_lines_are_refused_with_a_reason(argv: list[str], message: str) -> None:
    with pytest.raises(CtlError, match=message):
        changes_of(set_args(*argv))


def test_a_json_file_is_read_and_its_version_used_unless_given(tmp_path: Path) -> None:
    path = tmp_path / "d.json"
    path.write_text('{"version": 5, "cache": {"enabled": false}}')
    assert changes_of(set_args("--file", str(path))) == ({"cache": {"enabled": False}}, 5)
    assert changes_of(set_args("--file", str(path), "--version", "9"))[1] == 9


def test_the_version_is_the_next_one_and_an_older_one_is_refused() -> None:
    """Devices ignore a version that is not newer: the CLI refuses it instead of timing out."""
    assert choose_version(None, 0) == 1
    assert choose_version(None, 6) == 7
    assert choose_version(9, 6) == 9
    with pytest.raises(CtlError, match="leave --version out to use 7"):
        choose_version(6, 6)


def test_connection_options_may_come_before_or_after_the_subcommand() -> None:
    parser = build_parser(["ctl"])
    before = parser.parse_args(["ctl", "--timeout", "3", "--fleet", "f1", "status"])
    after = parser.parse_args(["ctl", "status", "--timeout", "3", "--fleet", "f1"])
    default = parser.parse_args(["ctl", "status"])
    assert (before.timeout, before.fleet) == (after.timeout, after.fleet) == (3.0, "f1")
    assert (default.timeout, default.mqtt) == (10.0, "127.0.0.1:1883")


def test_report_lines_show_the_values_in_force_or_each_problem() -> None:
    ok = ReportedConfig(
        version=2, scope="fleet", status=200, effective={"routing": {"threshold": 0.4}}
    )
    bad = ReportedConfig(version=2, scope="fleet", status=400, errors=["a: x", "b: y"])
    assert report_line("dev-a", ok, ["routing.threshold"], 6) == (
        "dev-a   200  applied  routing.threshold=0.4"
    )
    assert report_line("dev-b", bad, [], 6) == "dev-b   400  a: x; b: y"


def test_ctl_imports_without_torch_or_onnxruntime() -> None:
    """The operator CLI runs on any machine: no torch, no onnxruntime."""
    code = (
        "import sys\nfor m in ('torch', 'onnxruntime'): sys.modules[m] = None\nimport cloud.ctl.cli"
    )
    r = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert r.returncode == 0, r.stderr
