"""State files are written safely: through a fresh temporary file, never through a planted
symlink; a writer thread coalesces bursts; a failed roll-out's download can be discarded."""

from __future__ import annotations

import json
import os
from pathlib import Path

from edge.pack_history import PackHistory
from shared.files import StateWriter, write_json_atomic


def test_a_symlink_planted_at_the_old_temporary_name_is_not_written_through(
    tmp_path: Path,
) -> None:
    outside = tmp_path / "outside.txt"
    outside.write_text("precious")
    state = tmp_path / "state"
    state.mkdir()
    (state / "config.json.tmp").symlink_to(outside)  # the fixed name earlier versions used
    write_json_atomic(state / "config.json", {"v": 1})
    assert outside.read_text() == "precious"
    assert json.loads((state / "config.json").read_text()) == {"v": 1}


def test_a_symlink_at_the_target_is_replaced_not_followed(tmp_path: Path) -> None:
    outside = tmp_path / "outside.txt"
    outside.write_text("precious")
    target = tmp_path / "config.json"
    target.symlink_to(outside)
    write_json_atomic(target, {"v": 2})
    assert outside.read_text() == "precious"
    assert not target.is_symlink() and json.loads(target.read_text()) == {"v": 2}
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []


def test_the_writer_thread_writes_the_latest_state(tmp_path: Path) -> None:
    writer = StateWriter()
    for v in range(200):
        writer.write(tmp_path / "config.json", {"v": v})
    assert writer.flush()
    assert json.loads((tmp_path / "config.json").read_text()) == {"v": 199}


def test_a_discarded_pack_goes_unless_it_is_in_use(tmp_path: Path) -> None:
    history = PackHistory(tmp_path)
    fetched = history.packs_dir / "demo" / "v2"
    running = history.packs_dir / "demo" / "v1"
    for p in (fetched, running):
        p.mkdir(parents=True)
    history.switched(running, tmp_path / "initial")
    assert not history.discard(running) and running.exists()
    assert not history.discard(tmp_path)  # outside the pack store: never
    assert history.discard(fetched) and not fetched.exists()
    assert os.path.exists(tmp_path)
