"""The ModelStore gRPC service: lists the packs of a folder and streams them, verified, in chunks.

Every ``FetchPack`` first verifies the whole pack with :func:`shared.pack.manifest.open_pack`,
so a pack damaged on the server is refused (``FAILED_PRECONDITION``, naming the file) before
one byte is sent. The files follow one another in chunks; ``manifest.json`` comes last, so a
client that has it has everything (see :func:`shared.pack.fetch.fetch_pack`).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import AsyncIterator
from pathlib import Path

import grpc

from shared.pack.manifest import MANIFEST, Manifest, PackError, check_name, list_packs, open_pack
from shared.rpc import model_store_pb2, model_store_pb2_grpc

log = logging.getLogger(__name__)


# Smallest chunk sent, whatever a client asks for: each chunk costs the event loop a few
# steps, so tiny chunks would let one download take the loop from inference calls.
MIN_CHUNK_SIZE = 64 * 1024
# Downloads served at once; more are refused with RESOURCE_EXHAUSTED (the edge retries).
MAX_CONCURRENT_FETCHES = 4


class RateLimit:
    """A token bucket over the bytes all downloads send: streaming a pack costs the server's
    event loop and CPU, so unbounded downloads would take them from inference calls."""

    def __init__(self, bytes_per_s: float, burst_s: float = 0.25) -> None:
        self.rate = bytes_per_s
        self.capacity = max(1.0, bytes_per_s * burst_s)
        self.tokens = self.capacity
        self.stamp = time.monotonic()

    async def take(self, n: int) -> None:
        if self.rate <= 0:
            return
        now = time.monotonic()
        self.tokens = min(self.capacity, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        self.tokens -= n
        if self.tokens < 0:
            await asyncio.sleep(-self.tokens / self.rate)


class ModelStoreServicer(model_store_pb2_grpc.ModelStoreServicer):
    """Serves the packs under ``packs_dir`` (``<packs_dir>/<name>/<version>/``)."""

    def __init__(
        self,
        packs_dir: Path,
        default_chunk_size: int = 256 * 1024,
        max_chunk_size: int = 1024 * 1024,
        max_concurrent: int = MAX_CONCURRENT_FETCHES,
        min_chunk_size: int = MIN_CHUNK_SIZE,
        max_bytes_per_s: float = 0.0,
    ) -> None:
        """``max_bytes_per_s``: all downloads together send at most this (0 = no limit)."""
        if not 0 < min_chunk_size <= default_chunk_size <= max_chunk_size:
            raise ValueError("need 0 < min_chunk_size <= default_chunk_size <= max_chunk_size")
        self.min_chunk_size = min_chunk_size
        self.packs_dir = Path(packs_dir)
        self.default_chunk_size = default_chunk_size
        self.max_chunk_size = max_chunk_size
        self.max_concurrent = max_concurrent
        self._fetching = 0
        self.rate = RateLimit(max_bytes_per_s)

    # -- ListPacks ---------------------------------------------------------------------------

    def _list(self, name: str) -> list[model_store_pb2.PackInfo]:
        found: list[tuple[Manifest, str]] = []
        for pack_dir, manifest in list_packs(self.packs_dir):
            if name and pack_dir.parent.name != name:
                continue
            if isinstance(manifest, PackError):
                log.warning("skipping unreadable pack %s: %s", pack_dir, manifest)
                continue
            if (manifest.name, manifest.version) != (pack_dir.parent.name, pack_dir.name):
                log.warning(
                    "skipping pack %s: its manifest says %s/%s",
                    pack_dir,
                    manifest.name,
                    manifest.version,
                )
                continue
            try:
                text = (pack_dir / MANIFEST).read_text()
            except OSError as exc:
                log.warning("skipping unreadable pack %s: %s", pack_dir, exc)
                continue
            found.append((manifest, text))
        # Grouped by name; newest first within a name (build time, then version).
        found.sort(key=lambda mt: (mt[0].created, mt[0].version), reverse=True)
        found.sort(key=lambda mt: mt[0].name)
        return [
            model_store_pb2.PackInfo(
                name=m.name,
                version=m.version,
                manifest_json=text,
                files=[
                    model_store_pb2.PackFile(path=rel, sha256=entry.sha256, size=entry.size)
                    for rel, entry in sorted(m.files.items())
                ],
            )
            for m, text in found
        ]

    async def ListPacks(
        self, request: model_store_pb2.ListPacksRequest, context: grpc.aio.ServicerContext
    ) -> model_store_pb2.ListPacksResponse:
        packs = await asyncio.to_thread(self._list, request.name)
        return model_store_pb2.ListPacksResponse(packs=packs)

    # -- FetchPack ---------------------------------------------------------------------------

    async def FetchPack(
        self, request: model_store_pb2.FetchPackRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[model_store_pb2.PackChunk]:
        try:
            name = check_name("name", request.name)
            version = check_name("version", request.version)
        except PackError as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        if request.chunk_size < 0:
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"chunk_size must be >= 0 (0: server default), got {request.chunk_size}",
            )
        wanted = request.chunk_size or self.default_chunk_size
        chunk_size = max(self.min_chunk_size, min(wanted, self.max_chunk_size))
        if self._fetching >= self.max_concurrent:
            await context.abort(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"{self._fetching} pack downloads in progress (at most {self.max_concurrent}); "
                "retry later",
            )
        self._fetching += 1
        try:
            async for chunk in self._pack_chunks(name, version, chunk_size, context):
                yield chunk
        finally:
            self._fetching -= 1

    async def _pack_chunks(
        self, name: str, version: str, chunk_size: int, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[model_store_pb2.PackChunk]:

        pack_dir = self.packs_dir / name / version
        if not (pack_dir / MANIFEST).is_file():
            await context.abort(grpc.StatusCode.NOT_FOUND, f"no pack {name}/{version}")
        pack_dir = pack_dir.resolve()  # `latest` -> the version folder, once for all files
        try:
            manifest = await asyncio.to_thread(open_pack, pack_dir)
        except PackError as exc:
            reason = str(exc).replace(str(pack_dir), f"{name}/{version}")
            log.error("refusing to serve damaged pack %s: %s", pack_dir, exc)
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, reason)
        manifest_bytes = await asyncio.to_thread((pack_dir / MANIFEST).read_bytes)

        for rel, entry in sorted(manifest.files.items()):
            async for chunk in self._file_chunks(
                pack_dir, rel, entry.sha256, entry.size, chunk_size, context
            ):
                yield chunk
        sha = hashlib.sha256(manifest_bytes).hexdigest()
        size = len(manifest_bytes)
        offset = 0
        while True:
            data = manifest_bytes[offset : offset + chunk_size]
            last = offset + len(data) >= size
            yield model_store_pb2.PackChunk(
                path=MANIFEST, offset=offset, data=data, sha256=sha, size=size, last=last
            )
            if last:
                return
            offset += len(data)

    async def _file_chunks(
        self,
        pack_dir: Path,
        rel: str,
        sha256: str,
        size: int,
        chunk_size: int,
        context: grpc.aio.ServicerContext,
    ) -> AsyncIterator[model_store_pb2.PackChunk]:
        """Chunks of one file, each read in a worker thread so the event loop stays free. No
        file stays open between chunks: a download cancelled midway leaves nothing open."""
        offset = 0
        while True:
            want = min(chunk_size, size - offset)
            data = await asyncio.to_thread(_read_at, pack_dir / rel, offset, want) if want else b""
            if len(data) != want:
                # The file shrank since open_pack verified it: stop rather than send garbage.
                await context.abort(
                    grpc.StatusCode.FAILED_PRECONDITION,
                    f"file {rel!r} of the pack changed while it was being sent",
                )
            last = offset + want >= size
            await self.rate.take(len(data))
            yield model_store_pb2.PackChunk(
                path=rel, offset=offset, data=data, sha256=sha256, size=size, last=last
            )
            if last:
                return
            offset += want


def _read_at(path: Path, offset: int, size: int) -> bytes:
    with path.open("rb") as f:
        f.seek(offset)
        return f.read(size)
