"""Shared test fixtures: the real audio in ../shared/fixtures and small helpers."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = Path(os.environ.get("MUZARR_FIXTURES", ROOT.parent / "shared" / "fixtures"))


@pytest.fixture(scope="session")
def fixtures_dir() -> Path:
    """The real-audio fixture folder; skips (or fails, under MUZARR_REQUIRE_FIXTURES=1) when absent."""
    if not FIXTURES.is_dir():
        message = f"real-audio fixtures not found at {FIXTURES} (set MUZARR_FIXTURES or put shared/ beside the repo)"
        if os.environ.get("MUZARR_REQUIRE_FIXTURES") == "1":
            pytest.fail(message)
        pytest.skip(message)
    return FIXTURES
