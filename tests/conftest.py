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


@pytest.fixture(scope="session", autouse=True)
def trackio_dir(tmp_path_factory) -> Path:
    """trackio's local store for the session (it reads $TRACKIO_DIR once, at import), never ~/.cache."""
    path = tmp_path_factory.mktemp("trackio")
    os.environ["TRACKIO_DIR"] = str(path)
    return path


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


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory, sample_dir, cache_dir) -> Path:
    """One finished 1-epoch scratch-CNN run at 32 px, shared (read-only) by the hub and predict tests."""
    from hf_animals import training

    out = tmp_path_factory.mktemp("tiny_run") / "tiny_cnn_run"
    training.train(training.TrainConfig(
        model="animals_cnn5", data_dir=str(sample_dir), output_dir=str(out), epochs=1, batch_size=16,
        image_size=32, train_per_class=8, val_per_class=4, test_per_class=4, progress=False,
        cache_dir=str(cache_dir)))
    return out
