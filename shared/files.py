"""State files written so that a crash or a planted file never leaves a half-written or
misdirected one."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import tempfile
import threading
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


def write_json_atomic(path: Path, data: Any) -> None:
    """Write ``data`` as JSON to a fresh temporary file in ``path``'s folder, flush it to disk,
    then rename it over ``path``.

    The temporary file is created new (``O_CREAT | O_EXCL``, a random name), so a file or a
    symlink planted beside ``path`` is never written through; the rename replaces ``path``
    itself, not what a symlink at ``path`` points to. On any error the temporary file is removed
    and ``path`` keeps its old content.
    """
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=2)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


class StateWriter:
    """Writes JSON state files from a thread of its own, latest first: the caller (an event
    loop) never waits for a disk, and a burst of updates to one file costs one write.

    ``write(path, data)`` replaces what is pending for ``path``; failures are logged and the
    next write tries again. ``flush()`` waits until everything submitted is on disk.
    """

    def __init__(self, name: str = "state-writer") -> None:
        self._pending: dict[Path, Any] = {}
        self._cond = threading.Condition()
        self._busy = False
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def write(self, path: Path, data: Any) -> None:
        with self._cond:
            self._pending[path] = data
            self._cond.notify_all()

    def flush(self, timeout: float = 10.0) -> bool:
        """True once every pending write is done (False after ``timeout`` seconds)."""
        with self._cond:
            return self._cond.wait_for(lambda: not self._pending and not self._busy, timeout)

    def _run(self) -> None:
        while True:
            with self._cond:
                self._cond.wait_for(lambda: bool(self._pending))
                path, data = next(iter(self._pending.items()))
                del self._pending[path]
                self._busy = True
            try:
                write_json_atomic(path, data)
            except OSError as exc:
                log.error("cannot write %s: %s (what is in force stays in memory)", path, exc)
            finally:
                with self._cond:
                    self._busy = False
                    self._cond.notify_all()
