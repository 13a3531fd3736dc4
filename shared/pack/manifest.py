"""Model packs: a versioned folder with a manifest that names and hashes every file.

Layout (like a Triton model repository, one folder per version)::

    <packs>/<name>/<version>/manifest.json
                             full.safetensors      full model weights (never pickle)
                             proxy.onnx            proxy decoder, fp32, KV-cache I/O
                             proxy.int8.onnx       optional, kept only with its measured agreement
                             proxy.safetensors     proxy weights, to re-export or fine-tune
                             tokenizer.json
                             calibration.json      threshold -> edge share, accuracy of the mix
    <packs>/<name>/latest -> <version>            (a symlink the builder maintains)

:func:`open_pack` checks every file's size and sha256 against the manifest before anything is
loaded, so a flipped byte or a truncated download is refused with the file's name.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from shared.names import is_plain_name

FORMAT: Literal["autoglm-pack/1"] = "autoglm-pack/1"
MANIFEST = "manifest.json"
# Largest file a pack may declare (a 7B model's fp32 safetensors shard is well below it) and
# most files: a declared size or count beyond them is refused before anything is written.
MAX_FILE_BYTES = 64 * 2**30
MAX_FILES = 4096


class PackError(Exception):
    """A pack that cannot be used; the message names the pack and the file at fault."""


class FileEntry(BaseModel):
    model_config = ConfigDict(extra="forbid")
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$", description="hex sha256 of the file's bytes")
    size: int = Field(ge=0, le=MAX_FILE_BYTES, description="size in bytes")


class DecoderIO(BaseModel):
    """Names of the ONNX decoder's inputs and outputs (the common decoder convention)."""

    model_config = ConfigDict(extra="forbid")
    input_ids: str = "input_ids"
    attention_mask: str = "attention_mask"
    position_ids: str = "position_ids"
    past_key: str = Field(default="past_key_values.{i}.key", description="format with layer i")
    past_value: str = "past_key_values.{i}.value"
    logits: str = "logits"
    present_key: str = "present.{i}.key"
    present_value: str = "present.{i}.value"


class ProxySpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    onnx: str = Field(description="fp32 ONNX decoder file")
    onnx_int8: str | None = Field(
        default=None, description="int8 variant (see int8_agreement before using it)"
    )
    int8_agreement: float | None = Field(
        default=None, description="greedy token agreement with fp32"
    )
    weights: str | None = Field(default=None, description="safetensors weights of the proxy")
    config: dict[str, Any] = Field(
        description="architecture: n_layer, n_head, n_embd, block_size..."
    )
    params: int = Field(ge=1)
    n_layer: int = Field(ge=1)
    n_head: int = Field(ge=1)
    head_dim: int = Field(ge=1)
    context_limit: int = Field(ge=2, description="largest position + 1 the proxy accepts")
    io: DecoderIO = Field(default_factory=DecoderIO)


class FullSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    weights: str = Field(description="safetensors file")
    arch: Literal["gpt"] = "gpt"
    config: dict[str, Any]
    params: int = Field(ge=1)


class RoutingSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    confidence: Literal["min_token_prob"] = Field(
        default="min_token_prob", description="how a request's confidence is computed"
    )
    default_threshold: float = Field(ge=0.0, le=1.0, description="escalate below this confidence")
    max_new_tokens: int = Field(ge=1, description="longest answer the proxy is trusted to write")


class Manifest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    format: Literal["autoglm-pack/1"] = FORMAT
    name: str
    version: str
    created: str = Field(description="UTC ISO-8601 time of the build")
    tokenizer: str = "tokenizer.json"
    calibration: str = "calibration.json"
    full: FullSpec
    proxy: ProxySpec
    routing: RoutingSpec
    build: dict[str, Any] = Field(default_factory=dict, description="recipe and training report")
    evaluation: dict[str, Any] = Field(
        default_factory=dict, description="headline test-split numbers"
    )
    files: dict[str, FileEntry] = Field(
        description="every other file of the pack, by relative path"
    )


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def file_entry(path: Path) -> FileEntry:
    return FileEntry(sha256=sha256_file(path), size=path.stat().st_size)


def check_name(kind: str, value: str) -> str:
    """Pack names and versions become folder names: keep them plain."""
    if not is_plain_name(value) or value in {".", ".."}:
        raise PackError(f"invalid pack {kind} {value!r}: use letters, digits, '.', '_', '-'")
    return value


def read_manifest(pack_dir: Path) -> Manifest:
    path = pack_dir / MANIFEST
    try:
        raw = json.loads(path.read_text())
    except FileNotFoundError:
        raise PackError(f"{pack_dir}: no {MANIFEST}") from None
    except (OSError, ValueError) as exc:
        raise PackError(f"{path}: unreadable manifest: {exc}") from None
    try:
        return Manifest.model_validate(raw)
    except ValidationError as exc:
        errs = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise PackError(f"{path}: invalid manifest: {errs}") from None


def verify_files(pack_dir: Path, manifest: Manifest) -> None:
    """Raise :class:`PackError` naming the first file that is missing, truncated or altered."""
    for rel, entry in sorted(manifest.files.items()):
        path = (pack_dir / rel).resolve()
        if pack_dir.resolve() not in path.parents:
            raise PackError(f"{pack_dir}: manifest names a file outside the pack: {rel!r}")
        if not path.is_file():
            raise PackError(f"{pack_dir}: file {rel!r} is missing")
        size = path.stat().st_size
        if size != entry.size:
            raise PackError(
                f"{pack_dir}: file {rel!r} has {size} bytes, manifest says {entry.size}"
            )
        if sha256_file(path) != entry.sha256:
            raise PackError(f"{pack_dir}: file {rel!r} does not match its sha256 in the manifest")


def seal(pack_dir: Path, manifest: Manifest) -> None:
    """Hash every file under ``pack_dir`` (subfolders included) into the manifest and write it."""
    skip = {MANIFEST, MANIFEST + ".tmp"}
    manifest.files = {
        p.relative_to(pack_dir).as_posix(): file_entry(p)
        for p in sorted(pack_dir.rglob("*"))
        if p.is_file() and p.relative_to(pack_dir).as_posix() not in skip
    }
    write_manifest(pack_dir, manifest)


def open_pack(pack_dir: Path | str) -> Manifest:
    """Read and verify a pack; accepts a version folder or a ``latest`` link to one."""
    pack_dir = Path(pack_dir).resolve()
    manifest = read_manifest(pack_dir)
    verify_files(pack_dir, manifest)
    return manifest


def write_manifest(pack_dir: Path, manifest: Manifest) -> None:
    """Write ``manifest.json`` atomically (write a temp file, then rename)."""
    tmp = pack_dir / (MANIFEST + ".tmp")
    tmp.write_text(manifest.model_dump_json(indent=2) + "\n")
    tmp.replace(pack_dir / MANIFEST)


def list_packs(root: Path | str) -> list[tuple[Path, Manifest | PackError]]:
    """Every ``<root>/<name>/<version>/`` with its manifest, or the reason it cannot be read."""
    out: list[tuple[Path, Manifest | PackError]] = []
    root = Path(root)
    for manifest_path in sorted(root.glob(f"*/*/{MANIFEST}")):
        pack_dir = manifest_path.parent
        if pack_dir.is_symlink():
            continue  # `latest` points at a version listed on its own
        try:
            out.append((pack_dir, read_manifest(pack_dir)))
        except PackError as exc:
            out.append((pack_dir, exc))
    return out
