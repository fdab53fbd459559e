"""A real 10-class image folder from a package registry: Fashion-MNIST, shipped by Debian's `dataset-fashion-mnist`.

Why: recipe decisions (optimizer, head init, EMA, Mixup, TTA, lr probing) must be measured on real images; the
generated sample (`sample_data`) is synthetic shapes that say little about photos. The machines of this project reach
only package registries, and Debian packages Zalando's Fashion-MNIST (70,000 greyscale 28x28 product photographs,
10 classes), so `apt-get install dataset-fashion-mnist` + `write_fashion_mnist` recreates the very folder the README's
recipe numbers were measured on. The folder follows Animals-10's layout (one sub-folder per class, PNG files), so
`prepare_data.py`, `train.py` and the study read it like the real assignment data.
"""
from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
from PIL import Image

from .errors import UserError

FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_PACKAGE = "dataset-fashion-mnist"
#: Label order of the IDX files (Zalando's README), as folder names.
FASHION_MNIST_CLASSES = ("tshirt_top", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag",
                         "ankle_boot")


def read_idx(path: Path) -> np.ndarray:
    """The array in a (gzipped) IDX file, the format of (Fashion-)MNIST: magic, dims, then uint8 data."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        raw = f.read()
    if len(raw) < 4 or raw[:2] != b"\0\0" or raw[2] != 0x08:
        raise UserError(f"{path} is not a uint8 IDX file")
    ndim = raw[3]
    dims = tuple(int.from_bytes(raw[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim))
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if data.size != int(np.prod(dims)):
        raise UserError(f"{path} is truncated: {data.size} values for shape {dims}")
    return data.reshape(dims)


def write_fashion_mnist(out_dir: str | Path, per_class: int = 450, source_dir: str | Path = FASHION_MNIST_DIR) -> Path:
    """Write the first `per_class` images of each class of Fashion-MNIST's training file as OUT/CLASS/NNNNN.png.

    Deterministic (file order), so the same folder and therefore the same 300/75/75 split comes back every time.
    Refuses to write into a non-empty folder that does not already hold exactly these class folders.
    """
    source_dir = Path(source_dir)
    images_file, labels_file = source_dir / "train-images-idx3-ubyte.gz", source_dir / "train-labels-idx1-ubyte.gz"
    if not images_file.is_file() or not labels_file.is_file():
        raise UserError(f"Fashion-MNIST not found in {source_dir}: apt-get install {FASHION_MNIST_PACKAGE}")
    out = Path(out_dir)
    if out.exists() and any(out.iterdir()) and {p.name for p in out.iterdir()} != set(FASHION_MNIST_CLASSES):
        raise UserError(f"{out} is not empty and not a Fashion-MNIST folder written by this tool")
    images, labels = read_idx(images_file), read_idx(labels_file)
    for label, name in enumerate(FASHION_MNIST_CLASSES):
        picked = np.flatnonzero(labels == label)[:per_class]
        if len(picked) < per_class:
            raise UserError(f"Fashion-MNIST has only {len(picked)} training images of {name}, not {per_class}")
        folder = out / name
        folder.mkdir(parents=True, exist_ok=True)
        for i in picked:
            Image.fromarray(images[i], "L").save(folder / f"{i:05d}.png", optimize=False)
    return out
