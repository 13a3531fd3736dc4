"""Reading the PEM files of TLS settings, with errors that name the setting and the file.

One reader for the cloud's server credentials, the edge's channel to the cloud and the broker,
and ``autoglm health``.
"""

from __future__ import annotations

from pathlib import Path


class PemFileError(ValueError):
    """A configured certificate or key file cannot be read."""


def read_pem(path: Path | None, setting: str) -> bytes | None:
    """The bytes of ``path`` (None when the setting is unset); PemFileError naming ``setting``."""
    if path is None:
        return None
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise PemFileError(f"{setting}: cannot read {path}: {exc.strerror}") from None
