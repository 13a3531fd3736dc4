"""ModelStore over a real in-process gRPC server: listing, chunked download, damage refused."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import grpc
import pytest
from conftest import PackMaker
from hypothesis import given
from hypothesis import strategies as st

from cloud.service.model_store import MIN_CHUNK_SIZE, ModelStoreServicer
from shared.pack.fetch import fetch_pack
from shared.pack.manifest import MANIFEST, PackError, open_pack
from shared.rpc import model_store_pb2, model_store_pb2_grpc

CHUNK = 64  # the server's default chunk size in these tests: most files span several chunks
FILES = {
    "full.safetensors": bytes(range(256)) * 3 + b"tail",  # 772 bytes: 13 chunks
    "proxy.onnx": b"onnx" * 50,
    "tokenizer.json": b"{}",
    "empty.bin": b"",
    "extra/notes.txt": b"x" * CHUNK,  # exactly one chunk, in a subfolder
}
T = TypeVar("T")


@pytest.fixture
def packs(make_pack: PackMaker, tmp_path: Path) -> Path:
    root = tmp_path / "packs"
    for name, version, created in [
        ("demo", "v1", "2026-11-20T00:00:00+00:00"),
        ("demo", "v2", "2026-11-21T00:00:00+00:00"),
        ("other", "1", "2026-11-19T00:00:00+00:00"),
    ]:
        # each name's files differ, so a mix-up between packs shows in the hashes
        files = {rel: data + name.encode() if data else data for rel, data in FILES.items()}
        make_pack(root, name, version, files, created)
    return root


def with_store(packs: Path, fn: Callable[[Any], Awaitable[T]], **store: Any) -> T:
    """Run ``fn(stub)`` against a ModelStore server on a free local port, then stop it."""
    store = store or {"default_chunk_size": CHUNK, "max_chunk_size": 4 * CHUNK, "min_chunk_size": 1}

    async def main() -> T:
        server = grpc.aio.server()
        model_store_pb2_grpc.add_ModelStoreServicer_to_server(
            ModelStoreServicer(packs, **store), server
        )
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
                return await fn(model_store_pb2_grpc.ModelStoreStub(channel))
        finally:
            await server.stop(None)

    return asyncio.run(main())


def fetch_chunks(packs: Path, name: str, version: str, chunk_size: int = 0) -> list[Any]:
    async def go(stub: Any) -> list[Any]:
        req = model_store_pb2.FetchPackRequest(name=name, version=version, chunk_size=chunk_size)
        return [c async for c in stub.FetchPack(req)]

    return with_store(packs, go)


def rpc_error(packs: Path, name: str, version: str, chunk_size: int = 0) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        fetch_chunks(packs, name, version, chunk_size)
    return info.value


def test_list_packs_lists_every_pack_with_its_hashes(packs: Path) -> None:
    """Both names, newest version first, each file with the manifest's sha256 and size."""
    resp = with_store(packs, lambda stub: stub.ListPacks(model_store_pb2.ListPacksRequest()))
    assert [(p.name, p.version) for p in resp.packs] == [
        ("demo", "v2"),
        ("demo", "v1"),
        ("other", "1"),
    ]
    for info in resp.packs:
        pack = packs / info.name / info.version
        assert info.manifest_json == (pack / MANIFEST).read_text()
        assert {f.path: (f.sha256, f.size) for f in info.files} == {
            rel: (e.sha256, e.size) for rel, e in open_pack(pack).files.items()
        }
    only = with_store(packs, lambda s: s.ListPacks(model_store_pb2.ListPacksRequest(name="other")))
    assert [(p.name, p.version) for p in only.packs] == [("other", "1")]


def test_list_packs_skips_an_unreadable_pack(packs: Path) -> None:
    (packs / "demo" / "v1" / MANIFEST).write_text("{not json")
    resp = with_store(packs, lambda stub: stub.ListPacks(model_store_pb2.ListPacksRequest()))
    assert [(p.name, p.version) for p in resp.packs] == [("demo", "v2"), ("other", "1")]


@pytest.mark.parametrize("chunk_size", [0, 10, 10_000])
def test_fetch_streams_every_file_in_order_manifest_last(packs: Path, chunk_size: int) -> None:
    """Chunks reassemble to the exact bytes; sizes stay within the (clamped) chunk size."""
    chunks = fetch_chunks(packs, "demo", "v2", chunk_size)
    limit = {0: CHUNK, 10: 10, 10_000: 4 * CHUNK}[chunk_size]
    pack = packs / "demo" / "v2"
    got: dict[str, bytes] = {}
    order: list[str] = []
    for c in chunks:
        assert len(c.data) <= limit
        if c.path not in got:
            order.append(c.path)
            got[c.path] = b""
        assert c.offset == len(got[c.path])
        got[c.path] += c.data
        assert c.last == (len(got[c.path]) == c.size)
        assert c.sha256 == hashlib.sha256((pack / c.path).read_bytes()).hexdigest()
    assert order[-1] == MANIFEST
    assert set(order) == set(FILES) | {MANIFEST} and len(order) == len(got)
    assert got == {rel: (pack / rel).read_bytes() for rel in got}
    assert [c.data for c in chunks if c.path == "empty.bin"] == [b""]
    assert sum(c.path == "full.safetensors" for c in chunks) > 1


def test_fetch_pack_round_trips_into_place(packs: Path, tmp_path: Path) -> None:
    dest_root = tmp_path / "edge"
    final = with_store(packs, lambda stub: fetch_pack(stub, "demo", "v1", dest_root))
    assert final == dest_root / "demo" / "v1"
    assert open_pack(final) == open_pack(packs / "demo" / "v1")
    for rel in [*FILES, MANIFEST]:
        assert (final / rel).read_bytes() == (packs / "demo" / "v1" / rel).read_bytes()
    assert [p.name for p in (dest_root / "demo").iterdir()] == ["v1"]  # no .fetch-* left


def test_unknown_pack_is_not_found(packs: Path, tmp_path: Path) -> None:
    assert rpc_error(packs, "demo", "v9").code() == grpc.StatusCode.NOT_FOUND
    assert rpc_error(packs, "nope", "v1").code() == grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.aio.AioRpcError):
        with_store(packs, lambda stub: fetch_pack(stub, "demo", "v9", tmp_path / "edge"))
    assert list((tmp_path / "edge" / "demo").iterdir()) == []


@pytest.mark.parametrize(
    ("name", "version", "chunk_size"),
    [("../x", "v1", 0), ("demo", "..", 0), ("demo", "a/b", 0), ("demo", "v1", -1)],
)
def test_bad_arguments_are_invalid_argument(
    packs: Path, name: str, version: str, chunk_size: int
) -> None:
    err = rpc_error(packs, name, version, chunk_size)
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_damaged_pack_on_the_server_is_refused_naming_the_file(packs: Path) -> None:
    """A flipped byte is caught before streaming: FAILED_PRECONDITION, no chunk sent."""
    path = packs / "demo" / "v2" / "proxy.onnx"
    data = bytearray(path.read_bytes())
    data[7] ^= 0x01
    path.write_bytes(bytes(data))
    err = rpc_error(packs, "demo", "v2")
    assert err.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "proxy.onnx" in (err.details() or "")
    assert str(packs) not in (err.details() or "")  # the server's folders are not disclosed


class FakeStub:
    """A stub whose FetchPack replays given chunks (to feed fetch_pack a bad stream)."""

    def __init__(self, chunks: list[Any]) -> None:
        self.chunks = chunks

    def FetchPack(self, request: Any) -> AsyncIterator[Any]:
        async def gen() -> AsyncIterator[Any]:
            for c in self.chunks:
                yield c

        return gen()


def corrupt(chunks: list[Any], path: str) -> list[Any]:
    out = [model_store_pb2.PackChunk.FromString(c.SerializeToString()) for c in chunks]
    target = next(c for c in out if c.path == path and c.data)
    target.data = bytes([target.data[0] ^ 0xFF]) + target.data[1:]
    return out


@pytest.mark.parametrize("path", ["full.safetensors", "extra/notes.txt", MANIFEST])
def test_corrupted_stream_raises_naming_the_file_and_moves_nothing(
    packs: Path, tmp_path: Path, path: str
) -> None:
    chunks = fetch_chunks(packs, "demo", "v2")
    dest_root = tmp_path / "edge"
    with pytest.raises(PackError, match=rf"{path}.*sha256"):
        asyncio.run(fetch_pack(FakeStub(corrupt(chunks, path)), "demo", "v2", dest_root))
    assert list((dest_root / "demo").iterdir()) == []
    # The intact stream goes through.
    final = asyncio.run(fetch_pack(FakeStub(chunks), "demo", "v2", dest_root))
    assert open_pack(final).version == "v2"


@pytest.mark.parametrize(
    ("mangle", "match"),
    [
        (lambda cs: cs[:-1], "ended before its last chunk"),
        (lambda cs: [c for c in cs if c.path != MANIFEST], "without manifest.json"),
        (lambda cs: [c for c in cs if (c.path, c.offset) != ("full.safetensors", CHUNK)], "offset"),
        (lambda cs: [model_store_pb2.PackChunk(path="../evil", size=0, last=True), *cs], "unsafe"),
        (lambda cs: [model_store_pb2.PackChunk(path="/etc/x", size=0, last=True), *cs], "unsafe"),
        (lambda cs: [model_store_pb2.PackChunk(path="big", size=2**40), *cs], "declared size"),
    ],
)
def test_inconsistent_stream_is_refused(
    packs: Path, tmp_path: Path, mangle: Callable[[list[Any]], list[Any]], match: str
) -> None:
    chunks = fetch_chunks(packs, "demo", "v2")
    dest_root = tmp_path / "edge"
    with pytest.raises(PackError, match=match):
        asyncio.run(fetch_pack(FakeStub(mangle(chunks)), "demo", "v2", dest_root))
    assert list((dest_root / "demo").iterdir()) == []
    assert not (tmp_path / "evil").exists()


def test_pack_already_in_place_is_reused_without_download(packs: Path, tmp_path: Path) -> None:
    dest_root = tmp_path / "edge"
    final = with_store(packs, lambda stub: fetch_pack(stub, "demo", "v1", dest_root))
    again = asyncio.run(fetch_pack(FakeStub([]), "demo", "v1", dest_root))  # nothing streamed
    assert again == final
    (final / "tokenizer.json").write_bytes(b"[]")
    with pytest.raises(PackError, match=r"tokenizer\.json"):
        asyncio.run(fetch_pack(FakeStub([]), "demo", "v1", dest_root))


def test_tiny_chunk_sizes_are_raised_to_the_servers_minimum(packs: Path) -> None:
    """A client asking for 1-byte chunks gets at least MIN_CHUNK_SIZE-byte ones: one download
    cannot take the event loop from inference with millions of chunks."""

    async def go(stub: Any) -> list[Any]:
        req = model_store_pb2.FetchPackRequest(name="demo", version="v2", chunk_size=1)
        return [c async for c in stub.FetchPack(req)]

    chunks = with_store(packs, go, min_chunk_size=MIN_CHUNK_SIZE)
    assert sum(c.path == "full.safetensors" for c in chunks) == 1  # 772 bytes: one chunk


def test_downloads_beyond_the_concurrency_limit_are_refused_at_once(packs: Path) -> None:
    async def go(stub: Any) -> list[grpc.StatusCode]:
        req = model_store_pb2.FetchPackRequest(name="demo", version="v2")
        first = stub.FetchPack(req)
        await first.read()  # one download in progress
        try:
            await stub.FetchPack(req).read()
        except grpc.aio.AioRpcError as exc:
            codes = [exc.code()]
        else:
            codes = [grpc.StatusCode.OK]
        first.cancel()
        return codes

    assert with_store(packs, go, max_concurrent=1, min_chunk_size=1, default_chunk_size=CHUNK,
                      max_chunk_size=CHUNK) == [grpc.StatusCode.RESOURCE_EXHAUSTED]  # fmt: skip


CHUNKS = st.lists(
    st.builds(
        model_store_pb2.PackChunk,
        path=st.sampled_from(["full.safetensors", "manifest.json", "a/b", "../x", "", "/etc/p"]),
        offset=st.integers(min_value=0, max_value=2**40),
        data=st.binary(max_size=64),
        sha256=st.sampled_from(["", "0" * 64]),
        size=st.integers(min_value=-5, max_value=2**63 - 1),
        last=st.booleans(),
    ),
    max_size=8,
)


@given(chunks=CHUNKS)
def test_any_pack_stream_is_a_pack_or_a_pack_error_and_leaves_nothing(
    tmp_path_factory: pytest.TempPathFactory, chunks: list[Any]
) -> None:
    dest_root = tmp_path_factory.mktemp("fetch")
    try:
        asyncio.run(fetch_pack(FakeStub(chunks), "demo", "v2", dest_root))
    except PackError:
        assert not (dest_root / "demo" / "v2").exists()
        assert [p.name for p in (dest_root / "demo").iterdir()] == []
