"""Shared fixtures: two CPU threads, fixed seeds, the real data root beside the repository."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# Spinning OpenMP threads starve each other when the cores are shared (a busy CI box): wait passively.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"

torch.set_num_threads(2)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture
def shared_data() -> Path:
    """The read-only real datasets (MNIST, Fashion-MNIST, CelebA subset, frog sample)."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real data not found at {SHARED_DATA}")
    return SHARED_DATA


@pytest.fixture
def cache_dir(tmp_path, monkeypatch) -> Path:
    """A private tensor cache so tests never write to the user's cache or to shared/."""
    path = tmp_path / "cache"
    monkeypatch.setenv("GENBENCH_CACHE", str(path))
    return path
