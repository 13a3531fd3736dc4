"""Test helpers for a real edge daemon in front of real cloud servers, all on loopback."""

from __future__ import annotations

import random
import shutil
from pathlib import Path
from typing import Any

import grpc

from bench.stack.processes import EdgeServer
from shared.pack.manifest import read_manifest, seal
from shared.rpc import inference_pb2 as pb
from shared.rpc import inference_pb2_grpc

T = 20.0  # deadline of ordinary calls, seconds


def ask(edge: EdgeServer | str, prompt: str, **kw: Any) -> pb.GenerateResponse:
    """One Generate call to an edge (a server or an address such as ``unix:/path``)."""
    sampling = kw.pop("sampling", None) or pb.SamplingParams()
    address = edge if isinstance(edge, str) else edge.address
    timeout = kw.pop("timeout", T)
    with grpc.insecure_channel(address) as ch:
        stub = inference_pb2_grpc.InferenceStub(ch)
        reply: pb.GenerateResponse = stub.Generate(
            pb.GenerateRequest(prompt=prompt, sampling=sampling, **kw), timeout=timeout
        )
        return reply


def copy_pack_as(pack: Path, root: Path, version: str) -> Path:
    """The pack copied under ``root/<name>/<version>``, re-sealed with the new version."""
    manifest = read_manifest(pack.resolve())
    dst = root / manifest.name / version
    shutil.copytree(pack.resolve(), dst)
    manifest.version = version
    seal(dst, manifest)
    return dst


def route(response: pb.GenerateResponse) -> str:
    return str(pb.Route.Name(response.route))


def edge_config(path: Path, text: str) -> list[str]:
    """Write a TOML settings file; returns the flags that pass it to ``edge serve``."""
    path.write_text(text)
    return ["--config", str(path)]


def prompts(family: str, tier: int, n: int, seed: int = 7) -> list[str]:
    """``n`` distinct test-split prompts of one family and tier (the pack never trained on them)."""
    from toolkit import tasks

    rng = random.Random(seed)
    seen: dict[str, None] = {}
    while len(seen) < n:
        seen[tasks.sample(rng, family, tier, "test").prompt] = None
    return list(seen)
