"""Download a model pack over the ModelStore service, verify it, and move it into place.

The pack is written to ``<dest_root>/<name>/.fetch-<version>/``; each file's size and sha256
are checked as its last chunk arrives, the whole pack is verified with :func:`open_pack` once
``manifest.json`` (sent last) is in, and only then the folder is renamed to
``<dest_root>/<name>/<version>`` in one step. On any failure the temporary folder is removed
and nothing is moved into place. Works with a ``grpc.aio`` stub (or anything whose
``FetchPack(request)`` returns an async iterator of ``PackChunk``). No torch, no onnxruntime.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import shutil
from pathlib import Path, PurePosixPath
from typing import Any, BinaryIO

from shared.pack.manifest import (
    MANIFEST,
    MAX_FILE_BYTES,
    MAX_FILES,
    PackError,
    check_name,
    open_pack,
)
from shared.rpc import model_store_pb2


def safe_relpath(path: str) -> PurePosixPath:
    """A chunk's path as a relative path that stays inside the pack folder, or PackError."""
    p = PurePosixPath(path)
    if (
        not path
        or "\\" in path
        or "\0" in path
        or p.is_absolute()
        or any(part in ("", ".", "..") for part in path.split("/"))
    ):
        raise PackError(f"server sent an unsafe file path {path!r}")
    return p


class _Incoming:
    """One file being received: its expected size and sha256, the bytes so far."""

    def __init__(self, target: Path, rel: str, sha256: str, size: int) -> None:
        self.rel, self.sha256, self.size = rel, sha256, size
        target.parent.mkdir(parents=True, exist_ok=True)
        self.file: BinaryIO = target.open("xb")
        self.hash = hashlib.sha256()
        self.written = 0

    def write(self, data: bytes) -> None:
        self.file.write(data)
        self.hash.update(data)
        self.written += len(data)

    def finish(self) -> None:
        self.file.close()
        if self.written != self.size:
            raise PackError(
                f"file {self.rel!r}: received {self.written} bytes, expected {self.size}"
            )
        if self.hash.hexdigest() != self.sha256:
            raise PackError(f"file {self.rel!r}: received bytes do not match its sha256")


async def _receive(stub: Any, name: str, version: str, tmp: Path, chunk_size: int) -> set[str]:
    """Write the streamed files under ``tmp``; return the relative paths received."""
    request = model_store_pb2.FetchPackRequest(name=name, version=version, chunk_size=chunk_size)
    done: set[str] = set()
    cur: _Incoming | None = None
    try:
        async for chunk in stub.FetchPack(request):
            if cur is None:
                rel = str(safe_relpath(chunk.path))
                if rel in done:
                    raise PackError(f"file {rel!r} sent twice")
                if not 0 <= chunk.size <= MAX_FILE_BYTES:
                    raise PackError(
                        f"file {rel!r}: declared size {chunk.size} outside [0, {MAX_FILE_BYTES}]"
                    )
                if len(done) >= MAX_FILES:
                    raise PackError(f"more than {MAX_FILES} files in one pack")
                free = (await asyncio.to_thread(shutil.disk_usage, tmp)).free
                if chunk.size > free:
                    raise PackError(
                        f"file {rel!r}: {chunk.size} bytes declared, {free} free on the disk"
                    )
                try:
                    cur = await asyncio.to_thread(
                        _Incoming, tmp / rel, rel, chunk.sha256, chunk.size
                    )
                except OSError as exc:
                    raise PackError(f"file {rel!r}: cannot create it: {exc}") from None
            elif chunk.path != cur.rel or chunk.sha256 != cur.sha256 or chunk.size != cur.size:
                raise PackError(f"file {cur.rel!r}: stream moved on before its last chunk")
            if chunk.offset != cur.written:
                raise PackError(
                    f"file {cur.rel!r}: chunk at offset {chunk.offset}, expected {cur.written}"
                )
            if cur.written + len(chunk.data) > cur.size:
                raise PackError(f"file {cur.rel!r}: more bytes than its size {cur.size}")
            if chunk.data:
                await asyncio.to_thread(cur.write, chunk.data)
            if chunk.last:
                finishing, cur = cur, None
                await asyncio.to_thread(finishing.finish)
                done.add(finishing.rel)
    finally:
        if cur is not None:
            cur.file.close()
    if cur is not None:
        raise PackError(f"file {cur.rel!r}: the stream ended before its last chunk")
    if MANIFEST not in done:
        raise PackError(f"the stream ended without {MANIFEST}")
    return done


def _finish(tmp: Path, dest: Path, name: str, version: str, received: set[str]) -> None:
    manifest = open_pack(tmp)
    if (manifest.name, manifest.version) != (name, version):
        raise PackError(
            f"asked for {name}/{version}, got a manifest for {manifest.name}/{manifest.version}"
        )
    extra = received - set(manifest.files) - {MANIFEST}
    if extra:
        raise PackError(f"server sent files the manifest does not list: {sorted(extra)}")
    try:
        os.rename(tmp, dest)  # atomic; fails if dest appeared meanwhile (non-empty dir)
    except OSError as exc:
        raise PackError(f"cannot move the pack into place at {dest}: {exc}") from None


async def fetch_pack(
    stub: Any, name: str, version: str, dest_root: Path, chunk_size: int = 0
) -> Path:
    """Fetch ``name``/``version`` into ``dest_root/name/version``; return that folder.

    A folder already in place that verifies is returned as is (no download); one that does not
    verify raises :class:`PackError` (remove it to fetch again). A damaged or inconsistent
    stream raises :class:`PackError` naming the file; gRPC errors (NOT_FOUND...) propagate as
    :class:`grpc.aio.AioRpcError`. Either way nothing is left behind.
    """
    check_name("name", name)
    check_name("version", version)
    dest_root = Path(dest_root)
    dest = dest_root / name / version
    if dest.exists():
        await asyncio.to_thread(open_pack, dest)
        return dest
    tmp = dest_root / name / f".fetch-{version}"
    if tmp.exists():
        await asyncio.to_thread(shutil.rmtree, tmp)  # left by an interrupted fetch
    tmp.mkdir(parents=True)
    try:
        received = await _receive(stub, name, version, tmp, chunk_size)
        await asyncio.to_thread(_finish, tmp, dest, name, version, received)
    except BaseException:
        await asyncio.shield(asyncio.to_thread(shutil.rmtree, tmp, True))
        raise
    return dest
