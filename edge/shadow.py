"""Desired configuration (the device shadow): fleet and device documents, versions, persistence.

The effective runtime settings are always recomputed from the start settings, then the fleet's
document, then the device's (the device wins): removing a key from a document restores the
value the daemon started with, and the order in which documents arrive does not matter. A
document applies only when its version is newer than the one of the same scope in force; an
invalid one changes nothing. What is in force is written to ``<state_dir>/config.json``
(atomically) and read at the next start, so a device restarts with it even with no broker. The
daemon hands that write to a :class:`~shared.files.StateWriter` thread: the event loop never
waits for the disk, and a burst of documents costs one write.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from shared.files import StateWriter, write_json_atomic
from shared.settings.base import SettingsError
from shared.settings.edge import RuntimeSettings

log = logging.getLogger(__name__)

Scope = Literal["fleet", "device"]
CONFIG_FILE = "config.json"


@dataclass(frozen=True)
class Doc:
    version: int
    patch: dict[str, Any]


@dataclass(frozen=True)
class Proposal:
    """A document checked against what is in force: apply ``settings``, or report ``errors``."""

    scope: Scope
    doc: Doc
    settings: RuntimeSettings | None
    errors: list[str]


class DesiredState:
    """The documents in force and the settings they give."""

    def __init__(
        self, base: RuntimeSettings, state_dir: Path, writer: StateWriter | None = None
    ) -> None:
        """``writer``: write the state from that thread; None writes before commit returns."""
        self.base = base
        self.writer = writer
        self.path = state_dir / CONFIG_FILE
        self.docs: dict[Scope, Doc | None] = {"fleet": None, "device": None}
        self.effective = base

    def version(self, scope: Scope) -> int:
        doc = self.docs[scope]
        return doc.version if doc is not None else 0

    def _merge(self, docs: dict[Scope, Doc | None]) -> RuntimeSettings:
        settings = self.base
        for scope in ("fleet", "device"):
            doc = docs[scope]
            if doc is not None:
                settings = settings.merged(doc.patch)
        return settings

    def propose(self, scope: Scope, doc: Doc) -> Proposal | None:
        """None for a stale document (version not newer); else the settings or the errors."""
        if doc.version <= self.version(scope):
            return None
        try:
            settings = self._merge({**self.docs, scope: doc})
        except SettingsError as exc:
            return Proposal(scope, doc, None, exc.problems)
        return Proposal(scope, doc, settings, [])

    def commit(self, proposal: Proposal) -> None:
        """Make an accepted proposal the state in force and persist it. Without a writer an
        OSError leaves nothing changed; with one, a failed write is logged by the writer and
        the state stays in force in memory."""
        assert proposal.settings is not None, "only an accepted proposal can be committed"
        docs = {**self.docs, proposal.scope: proposal.doc}
        data = {
            s: None if d is None else {"version": d.version, "patch": d.patch}
            for s, d in docs.items()
        }
        if self.writer is None:
            write_json_atomic(self.path, data)
        else:
            self.writer.write(self.path, data)
        self.docs, self.effective = docs, proposal.settings

    def load(self) -> RuntimeSettings:
        """The persisted documents, if any and still valid, put in force; the settings."""
        try:
            raw = json.loads(self.path.read_text())
            docs: dict[Scope, Doc | None] = {
                scope: None if raw.get(scope) is None else Doc(**raw[scope])
                for scope in ("fleet", "device")
            }
            self.effective = self._merge(docs)
            self.docs = docs
            log.info(
                "applied configuration from %s (fleet v%d, device v%d)",
                self.path,
                self.version("fleet"),
                self.version("device"),
            )
        except FileNotFoundError:
            pass
        except (OSError, ValueError, TypeError, SettingsError) as exc:
            log.warning("ignoring the saved configuration %s: %s", self.path, exc)
        return self.effective
