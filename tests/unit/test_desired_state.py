"""The device shadow: merge order, versions, validation, persistence; the telemetry window."""

from __future__ import annotations

import json
from pathlib import Path

from edge.metrics import TelemetryWindow
from edge.shadow import DesiredState, Doc
from shared.settings.edge import RoutingSettings, RuntimeSettings

BASE = RuntimeSettings(routing=RoutingSettings(threshold=0.4))


def _apply(state: DesiredState, scope: str, version: int, patch: dict[str, object]) -> None:
    proposal = state.propose(scope, Doc(version, patch))  # type: ignore[arg-type]
    assert proposal is not None and proposal.settings is not None, proposal
    state.commit(proposal)


def test_device_document_wins_over_the_fleet_in_any_order(tmp_path: Path) -> None:
    """base <- fleet <- device, whichever arrives first."""
    for order in (("fleet", "device"), ("device", "fleet")):
        state = DesiredState(BASE, tmp_path / order[0])
        (tmp_path / order[0]).mkdir()
        patches = {"fleet": {"routing": {"threshold": 0.5}, "cache": {"ttl_s": 9.0}},
                   "device": {"routing": {"threshold": 0.7}}}  # fmt: skip
        for scope in order:
            _apply(state, scope, 1, patches[scope])
        assert state.effective.routing.threshold == 0.7
        assert state.effective.cache.ttl_s == 9.0


def test_removing_a_key_restores_the_start_value(tmp_path: Path) -> None:
    """Documents replace each other whole; what a new one leaves out comes from the base."""
    state = DesiredState(BASE, tmp_path)
    _apply(state, "fleet", 1, {"routing": {"threshold": 0.9}})
    _apply(state, "fleet", 2, {"cache": {"enabled": False}})
    assert state.effective.routing.threshold == 0.4 and not state.effective.cache.enabled


def test_stale_versions_are_ignored_and_invalid_ones_change_nothing(tmp_path: Path) -> None:
    """Not newer: None. Invalid: the errors, each with its field; the state is untouched."""
    state = DesiredState(BASE, tmp_path)
    _apply(state, "device", 3, {"routing": {"threshold": 0.6}})
    assert state.propose("device", Doc(3, {"routing": {"threshold": 0.1}})) is None
    assert state.propose("device", Doc(2, {})) is None
    bad = state.propose("device", Doc(4, {"routing": {"threshold": 5}, "listen": "x:1"}))
    assert bad is not None and bad.settings is None
    assert any("listen" in e for e in bad.errors)
    assert state.effective.routing.threshold == 0.6 and state.version("device") == 3


def test_the_state_in_force_is_reloaded_at_the_next_start(tmp_path: Path) -> None:
    """config.json holds both documents; a new DesiredState puts them back in force; a broken
    file is ignored (start settings)."""
    state = DesiredState(BASE, tmp_path)
    _apply(state, "fleet", 5, {"fallback": {"on_cloud_failure": "fail"}})
    again = DesiredState(BASE, tmp_path)
    assert again.load().fallback.on_cloud_failure == "fail"
    assert again.version("fleet") == 5
    (tmp_path / "config.json").write_text(json.dumps({"fleet": {"version": 1, "patch": 3}}))
    assert DesiredState(BASE, tmp_path).load() == BASE


def test_telemetry_window_counts_routes_errors_and_percentiles() -> None:
    """drain() gives the interval's answers by route, errors, p50/p95, then starts empty."""
    window = TelemetryWindow()
    for i in range(1, 101):
        window.record("edge" if i % 4 else "cloud", "ok", i / 1000)
    window.record("none", "invalid_argument", 0.001)
    window.record_cloud_error()
    stats = window.drain()
    assert stats.requests == {"edge": 75, "cloud": 25} and stats.errors == 1
    assert stats.cloud_errors == 1 and stats.escalation_share == 0.25
    assert stats.latency_ms["p50"] == 50.5 and 95 <= stats.latency_ms["p95"] <= 96
    assert window.drain().answered == 0


def test_an_announcement_targets_the_fleet_or_only_its_listed_devices() -> None:
    """No device list: everyone; a list: a staged roll-out to those devices only."""
    from shared.control import ModelAnnouncement

    assert ModelAnnouncement(name="p", version="v", files={}).targets("any")
    staged = ModelAnnouncement(name="p", version="v", files={}, devices=["a", "b"])
    assert staged.targets("a") and not staged.targets("c")
