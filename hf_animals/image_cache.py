"""The decoded-image cache: every image of a manifest decoded and resized once, then read back as uint8 tensors.

    splits.csv ──▶ an Arrow file per split (uint8 N×3×S×S in cache_dir/pixels/KEY/) ──▶ ImageTensorDataset

Decoding is the slow part of a small-image pipeline (JPEG decode + resize costs more than a head's forward), so a
run, a study or the benchmark decodes each image once per (manifest, size) and every later epoch and run reads the
memory-mapped file. What to decode (the manifest) lives in `data`; how to decode one image is `data.load_rgb_resized`.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from . import data as hfdata
from . import preprocess

log = logging.getLogger(__name__)


def default_cache_dir() -> Path:
    return Path(os.environ.get("HF_ANIMALS_CACHE") or Path.home() / ".cache" / "hf_animals")


def pixel_cache_key(manifest_path, image_size: int, rows: Sequence[dict] | None = None, data_dir=None) -> str:
    """Cache folder name: manifest content + image size + preprocessing version.

    The manifest's sha1 column pins the bytes of every image; a manifest without it also keys on the data folder
    and each file's size and mtime, so an edited image is never served from a stale cache.
    """
    h = hashlib.sha256(Path(manifest_path).read_bytes())
    h.update(f"|{int(image_size)}|{hfdata.PREPROCESS_VERSION}".encode())
    if rows is not None and not all(r["sha1"] for r in rows):
        root = Path(data_dir).resolve()
        h.update(str(root).encode())
        for r in rows:
            st = (root / r["path"]).stat()
            h.update(f"|{st.st_size}:{st.st_mtime_ns}".encode())
    return f"{int(image_size)}px-{h.hexdigest()[:16]}"


def cached_split_arrays(data_dir, manifest_path, image_size: int, cache_dir=None, *,
                        verify: bool = True) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """{split: (uint8 pixels N×3×S×S, int64 labels N)}; each image decoded and resized once, then reused.

    The first call decodes every image (rgb_resized) into a fixed-size uint8 Array3D column of an Arrow file
    (datasets.map with an explicit cache_file_name) under cache_dir/pixels/<key>/<split>.arrow; later calls, in
    any run or study, read that file back. The key (pixel_cache_key) changes with the manifest content or the
    size. Labels are indices into data.class_names(manifest rows).
    """
    rows = hfdata.read_manifest(manifest_path, data_dir, verify=verify)
    root = hfdata.manifest_data_dir(Path(manifest_path), data_dir)
    names = hfdata.class_names(rows)
    index = {name: i for i, name in enumerate(names)}
    folder = Path(cache_dir or default_cache_dir()) / "pixels" / pixel_cache_key(manifest_path, image_size,
                                                                                  rows, root)
    folder.mkdir(parents=True, exist_ok=True)
    out = {}
    for split in hfdata.SPLITS:
        part = [r for r in rows if r["split"] == split]
        labels = torch.tensor([index[r["label"]] for r in part], dtype=torch.int64)
        if not part:
            out[split] = (torch.empty((0, 3, image_size, image_size), dtype=torch.uint8), labels)
            continue
        file = folder / f"{split}.arrow"
        pixels = _read_pixel_file(file, len(part), image_size) if file.exists() else None
        if pixels is None:
            _decode_to_arrow(root, part, image_size, file)
            pixels = _read_pixel_file(file, len(part), image_size)
        out[split] = (pixels, labels)
    info = folder / "info.json"
    if not info.exists():
        info.write_text(json.dumps({"manifest": str(Path(manifest_path).resolve()), "image_size": image_size,
                                    "preprocess": hfdata.PREPROCESS_VERSION, "class_names": names,
                                    "counts": {s: len(out[s][1]) for s in hfdata.SPLITS}}, indent=1) + "\n")
    return out


def _decode_to_arrow(root: Path, rows: Sequence[dict], size: int, file: Path) -> None:
    from datasets import Array3D, Dataset, Features, Value

    features = Features({"path": Value("string"), "pixels": Array3D((3, size, size), "uint8")})
    pool = ThreadPoolExecutor(hfdata.IO_WORKERS)  # decoding releases the GIL; one Arrow file, unlike map(num_proc=...)

    def decode(batch: dict) -> dict:
        arrays = pool.map(lambda rel: preprocess.load_rgb_resized(root / rel, size).transpose(2, 0, 1), batch["path"])
        return {"pixels": np.stack(list(arrays))}

    try:
        Dataset.from_dict({"path": [r["path"] for r in rows]}).map(
            decode, batched=True, batch_size=64, features=features, cache_file_name=str(file),
            load_from_cache_file=False, writer_batch_size=256, new_fingerprint=file.parent.name + file.stem,
            desc=f"decoding {file.stem} images at {size}px (once)")
    finally:
        pool.shutdown()


def _read_pixel_file(file: Path, expected_rows: int, size: int) -> torch.Tensor | None:
    """The pixels column as one writable uint8 tensor, or None if the file is unusable (then it is rebuilt)."""
    import pyarrow as pa
    from datasets import Dataset

    try:
        column = Dataset.from_file(str(file)).data.column("pixels")
    except Exception as err:  # a partial or foreign file: rebuild rather than fail
        log.warning("rebuilding unreadable image cache %s (%s)", file, err)
        return None
    if len(column) != expected_rows:
        return None
    # datasets' numpy formatter walks Array3D row by row and widens to int64; the Arrow storage is one flat
    # uint8 buffer per chunk, which we view directly (zero copy from the memory map) and then copy once.
    parts = []
    for chunk in column.chunks:
        flat = chunk.storage if isinstance(chunk, pa.ExtensionArray) else chunk
        while pa.types.is_list(flat.type) or pa.types.is_large_list(flat.type) or pa.types.is_fixed_size_list(
                flat.type):
            flat = flat.flatten()
        parts.append(flat.to_numpy(zero_copy_only=False))
    array = np.concatenate(parts) if len(parts) != 1 else parts[0].copy()
    return torch.from_numpy(array.reshape(expected_rows, 3, size, size))


class ImageTensorDataset(torch.utils.data.Dataset):
    """(uint8 CHW tensor, label) pairs from the decoded cache, optionally through a torchvision v2 transform."""

    def __init__(self, pixels_uint8: torch.Tensor, labels: torch.Tensor, transform=None):
        if len(pixels_uint8) != len(labels):
            raise ValueError(f"{len(pixels_uint8)} images but {len(labels)} labels")
        self.pixels = pixels_uint8
        self.labels = torch.as_tensor(labels, dtype=torch.int64)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int):
        image = self.pixels[i]
        if self.transform is not None:
            image = self.transform(image)
        return image, self.labels[i]
