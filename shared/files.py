"""State files written so that a crash or a planted file never leaves a half-written or
misdirected one."""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any


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
