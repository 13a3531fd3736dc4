"""Fixtures shared by every test package."""

from __future__ import annotations

import os
from collections.abc import Callable, Generator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

# Property-based tests: a fixed seed (derandomize) and a bounded number of examples, so that a
# run of `make test` is repeatable and its length known; AUTOGLM_HYPOTHESIS=dev explores more.
settings.register_profile(
    "ci",
    derandomize=True,
    max_examples=60,
    deadline=None,
    database=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile("dev", max_examples=500, deadline=None)
settings.load_profile(os.environ.get("AUTOGLM_HYPOTHESIS", "ci"))

ROOT = Path(__file__).resolve().parents[1]
# Built packs are kept here between test sessions (a pack of the same recipe is reused).
# `make test` builds the quick pack here before pytest starts (no per-test timeout on a build).
PACK_CACHE = Path(os.environ.get("AUTOGLM_TEST_PACKS", ROOT / ".cache" / "packs")).resolve()


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(
    item: pytest.Item,
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """Keeps each phase's report on the test item (``item.rep_call``...), so that a fixture's
    teardown can tell whether the test failed (and print what helps to see why)."""
    report = yield
    setattr(item, f"rep_{report.when}", report)
    return report


@pytest.fixture(scope="session")
def quick_pack() -> Path:
    """The quick pack: the one `make test` built before pytest started, else built here once
    per recipe (a few minutes on 2 cores) and reused."""
    from toolkit.build import RECIPES, build_pack

    return build_pack(RECIPES["quick"], PACK_CACHE)


PackMaker = Callable[..., Path]


@pytest.fixture
def make_pack() -> PackMaker:
    """Writes a small sealed pack: ``make_pack(root, name, version, files, created=...)``."""
    from shared.pack.manifest import FullSpec, Manifest, ProxySpec, RoutingSpec, seal

    def _make(
        root: Path, name: str, version: str, files: dict[str, bytes],
        created: str = "2026-11-21T00:00:00+00:00",
    ) -> Path:  # fmt: skip
        pack = root / name / version
        for rel, data in files.items():
            (pack / rel).parent.mkdir(parents=True, exist_ok=True)
            (pack / rel).write_bytes(data)
        manifest = Manifest(
            name=name, version=version, created=created,
            full=FullSpec(weights="full.safetensors", config={}, params=10),
            proxy=ProxySpec(onnx="proxy.onnx", config={}, params=1, n_layer=1, n_head=1,
                            head_dim=4, context_limit=8),
            routing=RoutingSpec(default_threshold=0.5, max_new_tokens=4),
            files={},
        )  # fmt: skip
        seal(pack, manifest)
        return pack

    return _make
