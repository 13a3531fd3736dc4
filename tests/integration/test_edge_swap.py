"""Hot model swap in the real daemon (SIGHUP reloads the pack path), and the edge without torch."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import grpc
import pytest
from hybrid import ask, copy_pack_as, route

from bench.stack.processes import EdgeServer

pytestmark = pytest.mark.slow


def _point(link: Path, target: Path) -> None:
    """Re-point a symlink atomically (what a roll-out does with ``latest``)."""
    tmp = link.with_name(link.name + ".tmp")
    tmp.symlink_to(target)
    tmp.replace(link)


def test_swap_under_concurrent_load_fails_no_request(quick_pack: Path, tmp_path: Path) -> None:
    """Requests run from four threads while the pack behind the daemon's path changes and SIGHUP
    swaps it: none fails, answers move from v1 to v2; a corrupt v3 is refused and v2 stays."""
    v1, v2 = copy_pack_as(quick_pack, tmp_path, "v1"), copy_pack_as(quick_pack, tmp_path, "v2")
    current = tmp_path / "quick" / "current"
    current.symlink_to(v1)
    edge = EdgeServer(current, tmp_path, args=["--mode", "edge_only"])
    seen: list[str] = []
    errors: list[grpc.RpcError] = []
    stop = threading.Event()

    def load(i: int) -> None:
        n = 0
        while not stop.is_set():
            n += 1
            try:
                r = ask(edge, f"rev w{i}x{n % 50}=")
                seen.append(r.models.edge_pack)
            except grpc.RpcError as exc:
                errors.append(exc)

    try:
        edge.wait_serving()
        threads = [threading.Thread(target=load, args=(i,)) for i in range(4)]
        for t in threads:
            t.start()
        time.sleep(0.5)
        _point(current, v2)
        os.kill(edge.proc.pid, signal.SIGHUP)
        end = time.monotonic() + 30
        while not (seen and seen[-1] == "quick/v2") and time.monotonic() < end:
            time.sleep(0.1)
        time.sleep(0.3)
        v3 = copy_pack_as(quick_pack, tmp_path, "v3")
        data = bytearray((v3 / "proxy.onnx").read_bytes())
        data[len(data) // 2] ^= 0xFF  # one flipped byte
        (v3 / "proxy.onnx").write_bytes(bytes(data))
        _point(current, v3)
        os.kill(edge.proc.pid, signal.SIGHUP)
        time.sleep(1.0)
        stop.set()
        for t in threads:
            t.join(30)
        assert not errors, errors[:3]
        assert seen[0] == "quick/v1" and seen[-1] == "quick/v2"
        assert "quick/v3" not in seen
        assert "reload refused, keeping quick/v2" in edge.log()
        assert route(ask(edge, "rev abc=")) == "ROUTE_EDGE"
    finally:
        stop.set()
        edge.stop()


def test_edge_serves_with_torch_absent(quick_pack: Path, tmp_path: Path) -> None:
    """`autoglm edge serve` starts and answers with torch unimportable (as on a device)."""
    blocker = tmp_path / "block"
    blocker.mkdir()
    # sitecustomize runs at interpreter start: torch then fails to import, as if not installed.
    (blocker / "sitecustomize.py").write_text("import sys\nsys.modules['torch'] = None\n")
    pythonpath = os.pathsep.join(filter(None, [str(blocker), os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "PYTHONPATH": pythonpath}
    probe = subprocess.run([sys.executable, "-c", "import torch"], env=env, capture_output=True)
    assert probe.returncode != 0, "the blocker did not block torch"
    edge = EdgeServer(
        quick_pack, tmp_path, args=["--mode", "edge_only"], env={"PYTHONPATH": pythonpath}
    )
    try:
        edge.wait_serving()
        assert route(ask(edge, "rev abc=")) == "ROUTE_EDGE"
    finally:
        edge.stop()
    assert "torch" not in edge.log().lower()
