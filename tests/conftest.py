"""Fixtures shared by every test package."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# Built packs are kept here between test sessions (same recipe -> same version -> reused).
PACK_CACHE = Path(os.environ.get("AUTOGLM_TEST_PACKS", ROOT / ".cache" / "packs"))


@pytest.fixture(scope="session")
def quick_pack() -> Path:
    """The quick pack, built once per recipe (about 2 minutes on 2 cores) and reused."""
    from cloud.toolkit.build import RECIPES, build_pack

    return build_pack(RECIPES["quick"], PACK_CACHE)
