"""`autoglm ctl` against the real edge agent (not a simulated device): config, status, roll-out."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from broker import Broker
from hybrid import ask, copy_pack_as

from autoglm_cli import main
from bench.stack.processes import CloudServer, EdgeServer

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def system(
    quick_pack: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Broker, EdgeServer, Path]]:
    work = tmp_path_factory.mktemp("ctl-edge")
    packs = work / "packs"
    copy_pack_as(quick_pack, packs, "r2")
    broker = Broker(work / "broker").start().wait_ready()
    cloud = CloudServer(quick_pack, work, args=["--auth-disabled", "--packs-dir", str(packs)])
    args = ["--mqtt", broker.address, "--fleet", "ops", "--device-id", "edge-1"]
    edge = EdgeServer(quick_pack, work, clouds=[cloud.address], args=args)
    try:
        cloud.wait_serving()
        edge.wait_serving()
        yield broker, edge, packs
    finally:
        edge.stop()
        cloud.stop()
        broker.stop()


def ctl(broker: Broker, *argv: str) -> int:
    return main(["ctl", "--mqtt", broker.address, "--fleet", "ops", "--timeout", "20", *argv])


def test_config_set_reaches_the_real_agent_and_status_shows_it(
    system: tuple[Broker, EdgeServer, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    """config set waits for the device's 200; a bad value is refused before publishing; status
    lists the device online."""
    broker, edge, _ = system
    assert ctl(broker, "status", "--json") == 0
    assert "edge-1" in capsys.readouterr().out
    assert ctl(broker, "config", "set", "routing.mode=cloud_only") == 0
    assert "200" in capsys.readouterr().out
    assert ask(edge, "rev abc=").escalation_reason == "policy_cloud_only"
    assert ctl(broker, "config", "set", "--device", "edge-1", "cache.ttl_s=-5") == 2
    assert "cache.ttl_s" in capsys.readouterr().err  # checked before anything is published
    assert ctl(broker, "config", "set", "routing.mode=auto") == 0
    capsys.readouterr()
    assert ctl(broker, "status", "--json") == 0
    out = capsys.readouterr().out
    assert '"online"' in out or "online" in out


def test_models_announce_and_rollback_through_the_cli(
    system: tuple[Broker, EdgeServer, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    """announce --pack: the device fetches, verifies and swaps (exit 0); rollback returns."""
    broker, edge, packs = system
    before = ask(edge, "rev abc=", route=1).models.edge_pack
    assert ctl(broker, "models", "announce", "--pack", str(packs / "quick" / "r2")) == 0
    assert "applied" in capsys.readouterr().out
    assert ask(edge, "rev abc=", route=1).models.edge_pack == "quick/r2"
    assert ctl(broker, "models", "rollback", "--device", "edge-1") == 0
    capsys.readouterr()
    assert ask(edge, "rev abc=", route=1).models.edge_pack == before
    assert ctl(broker, "cmd", "ping", "--device", "edge-1", "--json") == 0
    reply = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert reply["ok"] and reply["data"]["pack"] == before
