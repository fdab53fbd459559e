"""Shared fixtures: tiny generated image folders (real JPEG/PNG files) and an offline Hub."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
# Tests never touch the network: a Hub request fails at once instead of retrying for ~46 s.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("MPLBACKEND", "Agg")


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory) -> Path:
    """One decoded-image cache for the whole session, outside the user's ~/.cache."""
    path = tmp_path_factory.mktemp("hf_animals_cache")
    os.environ["HF_ANIMALS_CACHE"] = str(path)
    return path


@pytest.fixture(scope="session")
def sample_dir(tmp_path_factory) -> Path:
    """10 classes x 16 images of 48 px, mixed formats and modes (shared, read-only for tests)."""
    from hf_animals.sample_data import write_sample_dataset

    out = tmp_path_factory.mktemp("sample") / "animals"
    return write_sample_dataset(out, classes=10, per_class=16, size=48, seed=0)
