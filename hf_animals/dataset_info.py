"""What the image folder of a study or run actually holds: its classes, folder names, file formats and image sizes.

The report and the model card describe the data that was used, not the data the project was written for: a model
trained on clothing photos must not be called an Animals-10 model. Everything here is read from the split's rows
(`splits.csv`: path, label) and the image headers (PIL opens a file lazily, so no pixel is decoded), and
Animals-10 is named only when the class folders are its ten (Italian or English) names.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterable, Mapping

from PIL import Image

from .data import ENGLISH_TO_ITALIAN, ITALIAN_TO_ENGLISH, class_names
from .sample_data import MARKER as SAMPLE_MARKER

ANIMALS10 = "Animals-10"


def is_animals10(labels: Iterable[str]) -> bool:
    """True when the classes are exactly Animals-10's ten (folders named in Italian or English: both give the same
    English labels, see `data.english_label`)."""
    return set(labels) == set(ITALIAN_TO_ENGLISH.values())


@dataclass
class DatasetInfo:
    """The data of one split file. classes: labels in label order; folders: label -> class folder on disk;
    formats / modes: image count per PIL format ('JPEG', 'PNG', ...) and mode ('RGB', 'L', 'P', ...) of the files
    that could be opened; sizes: (smallest, largest) width and height in pixels; synthetic: the folder was written
    by `make_sample_data.py` (a stand-in, not photos)."""

    classes: list[str]
    folders: dict[str, str]
    num_images: int
    formats: dict[str, int] = field(default_factory=dict)
    modes: dict[str, int] = field(default_factory=dict)
    widths: tuple[int, int] | None = None
    heights: tuple[int, int] | None = None
    synthetic: bool = False

    @property
    def animals10(self) -> bool:
        return is_animals10(self.classes)

    def title(self, folder_name: str) -> str:
        """How to name the data: 'Animals-10' only for Animals-10's classes, else the image folder's name."""
        return ANIMALS10 if self.animals10 else folder_name

    def italian(self, label: str) -> str:
        """Animals-10's own (Italian) folder name of a class, only when the data is Animals-10."""
        return ENGLISH_TO_ITALIAN.get(label, "") if self.animals10 else ""

    def to_json(self) -> dict:
        return {**asdict(self), "animals10": self.animals10}

    @classmethod
    def from_json(cls, obj: Mapping) -> "DatasetInfo":
        known = {k: v for k, v in obj.items() if k in cls.__dataclass_fields__}
        for key in ("widths", "heights"):
            if known.get(key) is not None:
                known[key] = tuple(known[key])
        return cls(**known)


def describe_split(rows: list[Mapping], data_dir: str | Path | None = None) -> DatasetInfo:
    """The DatasetInfo of manifest rows (path relative to data_dir, label). Formats, modes and sizes come from the
    image headers when data_dir holds the files; without them (a card written on another machine) they stay empty."""
    labels = class_names(rows)
    folders = {}
    for row in rows:
        folders.setdefault(row["label"], Path(row["path"]).parts[0])
    formats, modes, widths, heights = Counter(), Counter(), [], []
    root = Path(data_dir) if data_dir else None
    if root is not None and root.is_dir():
        for row in rows:
            try:
                with Image.open(root / row["path"]) as image:
                    formats[image.format or "unknown"] += 1
                    modes[image.mode] += 1
                    widths.append(image.width)
                    heights.append(image.height)
            except OSError:
                continue  # a file gone since the split: described by what can still be read
    return DatasetInfo(
        classes=labels, folders={label: folders[label] for label in labels}, num_images=len(rows),
        formats=dict(formats.most_common()), modes=dict(modes.most_common()),
        widths=(min(widths), max(widths)) if widths else None, heights=(min(heights), max(heights)) if heights else None,
        synthetic=root is not None and (root / SAMPLE_MARKER).is_file())
