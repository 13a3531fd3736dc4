"""Pack manifests: every file hashed, and any damage refused with the file's name."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import PackMaker

from shared.pack.manifest import Manifest, PackError, list_packs, open_pack

FILES = {"full.safetensors": b"\x01" * 300, "proxy.onnx": b"onnx" * 50, "tokenizer.json": b"{}"}


@pytest.fixture
def pack(make_pack: PackMaker, tmp_path: Path) -> Path:
    return make_pack(tmp_path, "tiny", "1", FILES)


def test_intact_pack_opens(pack: Path) -> None:
    """A pack whose files match the manifest opens and reads back."""
    m = open_pack(pack)
    assert m.name == "tiny" and set(m.files) == set(FILES)


@pytest.mark.parametrize("rel", sorted(FILES))
def test_flipped_byte_is_refused_naming_the_file(pack: Path, rel: str) -> None:
    """One changed byte anywhere fails the hash check, and the error names the file."""
    data = bytearray((pack / rel).read_bytes())
    data[len(data) // 2] ^= 0x01
    (pack / rel).write_bytes(bytes(data))
    with pytest.raises(PackError, match=rf"{rel}.*sha256"):
        open_pack(pack)


def test_truncated_file_is_refused_naming_the_file(pack: Path) -> None:
    """A short file fails the size check before hashing."""
    (pack / "proxy.onnx").write_bytes(FILES["proxy.onnx"][:-7])
    with pytest.raises(PackError, match=r"proxy\.onnx.*193 bytes, manifest says 200"):
        open_pack(pack)


def test_missing_file_is_refused(pack: Path) -> None:
    (pack / "tokenizer.json").unlink()
    with pytest.raises(PackError, match=r"tokenizer\.json.*missing"):
        open_pack(pack)


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        ("not json", "unreadable manifest"),
        ('{"name": "x"}', "invalid manifest"),
        (None, "no manifest"),
    ],
)
def test_bad_manifest_is_refused(pack: Path, content: str | None, reason: str) -> None:
    """A missing, unparsable or incomplete manifest gives a readable reason."""
    if content is None:
        (pack / "manifest.json").unlink()
    else:
        (pack / "manifest.json").write_text(content)
    with pytest.raises(PackError, match=reason):
        open_pack(pack)


def test_manifest_cannot_point_outside_the_pack(pack: Path) -> None:
    """A file entry like '../x' is refused, so a manifest cannot make us read elsewhere."""
    raw = json.loads((pack / "manifest.json").read_text())
    raw["files"]["../../etc/passwd"] = raw["files"]["tokenizer.json"]
    (pack / "manifest.json").write_text(json.dumps(raw))
    with pytest.raises(PackError, match="outside the pack"):
        open_pack(pack)


def test_list_packs_reports_good_and_bad(make_pack: PackMaker, tmp_path: Path) -> None:
    """Listing shows every version, with the reason for the unreadable ones."""
    make_pack(tmp_path, "tiny", "1", FILES)
    bad = make_pack(tmp_path, "tiny", "2", FILES)
    (bad / "manifest.json").write_text("{")
    rows = list_packs(tmp_path)
    assert [p.name for p, _ in rows] == ["1", "2"]
    assert isinstance(rows[0][1], Manifest) and isinstance(rows[1][1], PackError)
