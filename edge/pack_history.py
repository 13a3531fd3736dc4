"""Which pack the device runs, persisted: the current one and the one before (for rollback).

``<state_dir>/pack.json`` holds ``{"current": PATH, "previous": PATH}``; packs fetched by a
roll-out live in ``<state_dir>/packs/<name>/<version>/``. At start the daemon runs ``current``
when it still verifies, else the configured ``pack``.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

from shared.files import write_json_atomic

log = logging.getLogger(__name__)

PACK_FILE = "pack.json"


class PackHistory:
    def __init__(self, state_dir: Path) -> None:
        self.path = state_dir / PACK_FILE
        self.packs_dir = state_dir / "packs"
        self.current: Path | None = None
        self.previous: Path | None = None
        try:
            raw = json.loads(self.path.read_text())
            self.current = Path(raw["current"]) if raw.get("current") else None
            self.previous = Path(raw["previous"]) if raw.get("previous") else None
        except FileNotFoundError:
            pass
        except (OSError, ValueError, TypeError, KeyError) as exc:
            log.warning("ignoring %s: %s", self.path, exc)

    def in_use(self, pack_dir: Path) -> bool:
        """The pack is the current or the previous one (a rollback may need it)."""
        resolved = pack_dir.resolve()
        return any(p is not None and p.resolve() == resolved for p in (self.current, self.previous))

    def discard(self, pack_dir: Path) -> bool:
        """Remove a fetched pack that is not in use and lies in the pack store; True if done."""
        store = self.packs_dir.resolve()
        target = pack_dir.resolve()
        if self.in_use(target) or not target.is_relative_to(store) or target == store:
            return False
        shutil.rmtree(target, ignore_errors=True)
        return True

    def switched(self, new: Path, old: Path) -> None:
        """Record a swap from ``old`` to ``new`` (OSError when it cannot be written)."""
        write_json_atomic(self.path, {"current": str(new), "previous": str(old)})
        self.current, self.previous = new, old
