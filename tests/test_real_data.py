"""The real-data folder writer: IDX parsing and the class-per-folder layout (on a tiny IDX file made here)."""
from __future__ import annotations

import gzip

import numpy as np
import pytest
from PIL import Image

from hf_animals.errors import UserError
from hf_animals.real_data import FASHION_MNIST_CLASSES, read_idx, write_fashion_mnist


def _idx(path, array: np.ndarray) -> None:
    header = bytes([0, 0, 8, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


@pytest.fixture
def idx_dir(tmp_path):
    labels = np.repeat(np.arange(10), 3)
    images = (np.arange(30)[:, None, None] * 7 + np.zeros((30, 28, 28))).astype(np.uint8)
    _idx(tmp_path / "train-images-idx3-ubyte.gz", images)
    _idx(tmp_path / "train-labels-idx1-ubyte.gz", labels)
    return tmp_path


def test_writes_the_first_images_of_each_class_as_pngs(idx_dir, tmp_path):
    out = write_fashion_mnist(tmp_path / "out", per_class=2, source_dir=idx_dir)
    assert sorted(p.name for p in out.iterdir()) == sorted(FASHION_MNIST_CLASSES)
    bag = sorted((out / "bag").iterdir())  # label 8: images 24, 25
    assert [p.name for p in bag] == ["00024.png", "00025.png"]
    assert np.asarray(Image.open(bag[1])).max() == 25 * 7
    write_fashion_mnist(out, per_class=2, source_dir=idx_dir)  # rewriting its own folder is fine


def test_refuses_missing_package_short_classes_and_foreign_folders(idx_dir, tmp_path):
    with pytest.raises(UserError, match="apt-get install dataset-fashion-mnist"):
        write_fashion_mnist(tmp_path / "a", source_dir=tmp_path / "nowhere")
    with pytest.raises(UserError, match="only 3"):
        write_fashion_mnist(tmp_path / "b", per_class=4, source_dir=idx_dir)
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "notes.txt").write_text("mine")
    with pytest.raises(UserError, match="not empty"):
        write_fashion_mnist(tmp_path / "c", per_class=1, source_dir=idx_dir)


def test_read_idx_rejects_a_truncated_file(tmp_path):
    path = tmp_path / "x.gz"
    with gzip.open(path, "wb") as f:
        f.write(bytes([0, 0, 8, 1]) + (10).to_bytes(4, "big") + b"\1\2")
    with pytest.raises(UserError, match="truncated"):
        read_idx(path)
