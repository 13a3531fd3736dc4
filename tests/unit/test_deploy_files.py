"""docker-compose.yml, Dockerfiles and broker configs: valid, and running only tested commands.

There is no Docker engine on the CI machines, so these files are checked by parsing: every
`autoglm` command they run must parse with the real command-line parser (the same commands the
tests run), and every file they copy or mount must exist.
"""

from __future__ import annotations

import shlex
from pathlib import Path

import pytest
import yaml

from shared.cli import build_parser

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
DOCKERFILES = sorted((ROOT / "deploy" / "docker").glob("*.Dockerfile"))


def _entrypoint(dockerfile: Path) -> list[str]:
    lines = [ln for ln in dockerfile.read_text().splitlines() if ln.startswith("ENTRYPOINT")]
    assert len(lines) == 1, f"{dockerfile.name}: one ENTRYPOINT expected"
    return list(yaml.safe_load(lines[0].removeprefix("ENTRYPOINT")))


def test_compose_file_has_services_and_named_volumes() -> None:
    """The compose file parses and every named volume it uses is declared."""
    declared = set(COMPOSE.get("volumes", {}))
    for name, svc in COMPOSE["services"].items():
        assert "image" in svc or "build" in svc, name
        for vol in svc.get("volumes", []):
            src = vol.split(":")[0]
            if src.startswith("."):
                assert (ROOT / src).exists(), f"{name}: mounts missing {src}"
            else:
                assert src in declared, f"{name}: volume {src} not declared"


@pytest.mark.parametrize(
    ("name", "svc"), [(n, s) for n, s in COMPOSE["services"].items() if "build" in s]
)
def test_compose_commands_parse_with_the_real_cli(name: str, svc: dict) -> None:
    """Each built service runs an `autoglm` command whose flags the real parser accepts."""
    dockerfile = ROOT / svc["build"]["dockerfile"]
    assert dockerfile.is_file(), name
    assert _entrypoint(dockerfile) == ["autoglm"]
    argv = svc["command"] if isinstance(svc["command"], list) else shlex.split(svc["command"])
    args = build_parser(argv).parse_args(argv)
    assert callable(args.handler)


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfiles_copy_files_that_exist(dockerfile: Path) -> None:
    """COPY sources exist, and the default CMD parses with the real CLI."""
    for line in dockerfile.read_text().splitlines():
        if line.startswith("COPY"):
            for src in line.split()[1:-1]:
                assert (ROOT / src).exists(), f"{dockerfile.name}: COPY {src}"
        if line.startswith("CMD"):
            argv = list(yaml.safe_load(line.removeprefix("CMD")))
            build_parser(argv).parse_args(argv)


@pytest.mark.parametrize("conf", sorted((ROOT / "deploy" / "mosquitto").glob("*.conf")))
def test_broker_configs_disable_nagle(conf: Path) -> None:
    """Every broker config sets set_tcp_nodelay, or small messages stall for 40 ms."""
    assert "set_tcp_nodelay true" in conf.read_text().splitlines()
