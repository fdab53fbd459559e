"""From a folder of class sub-folders to checked, reproducible splits, and the decode of one image.

    folder ──scan + check──▶ exact stratified split ──▶ splits.csv (+ splits.json: options, skipped)
    splits.csv ──▶ datasets.DatasetDict (image, label, path)         classic PIL + torchvision path
    splits.csv ──▶ image_cache (Arrow, uint8 N×3×S×S, decoded once with load_rgb_resized) ──▶ augment
                                                              ──▶ preprocess.normalize_batch (the only normalisation)

Every user-fixable problem (missing folder, empty class, corrupt file, stale manifest, ...) is one `UserError`
naming the file or class.
"""
from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
import os
import random
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
from PIL import Image, UnidentifiedImageError

from .errors import UserError

log = logging.getLogger(__name__)

ITALIAN_TO_ENGLISH = {
    "cane": "dog", "cavallo": "horse", "elefante": "elephant", "farfalla": "butterfly", "gallina": "chicken",
    "gatto": "cat", "mucca": "cow", "pecora": "sheep", "ragno": "spider", "scoiattolo": "squirrel",
}
ENGLISH_TO_ITALIAN = {english: italian for italian, english in ITALIAN_TO_ENGLISH.items()}
# What PIL reads and `datasets`' imagefolder accepts; compared lower-case.
IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"})
SPLITS = ("train", "val", "test")
MANIFEST_NAME = "splits.csv"
MANIFEST_INFO_NAME = "splits.json"  # options + skipped/duplicate files, written next to the manifest
MANIFEST_COLUMNS = ("path", "label", "split", "sha1")
# Bump when preprocess.rgb_resized's output changes, so no cache made by the old code is reused.
PREPROCESS_VERSION = "rgb-on-white.exif.pil-bilinear.v1"
_IGNORED_NAMES = {"__MACOSX", "Thumbs.db", "desktop.ini"}
#: Threads for file checks and decoding (PIL and hashlib release the GIL).
IO_WORKERS = min(8, os.cpu_count() or 1)


# ---------------------------------------------------------------------------------------------- labels

def english_label(folder_name: str) -> str:
    """The English class name for a folder: Animals-10's Italian names are translated, others kept as is."""
    key = folder_name.strip().lower()
    if key in ITALIAN_TO_ENGLISH:
        return ITALIAN_TO_ENGLISH[key]
    return key if key in ENGLISH_TO_ITALIAN else folder_name


def class_names(rows: Iterable[dict]) -> list[str]:
    """Sorted English class names; this order is the label index everywhere (model head, metrics, cards)."""
    return sorted({row["label"] for row in rows})


# ---------------------------------------------------------------------------------------------- scan + check

@dataclass
class FolderScan:
    """What is in an image folder: image files per English label, and what was ignored."""
    data_dir: Path
    files: dict[str, list[str]]  # label -> sorted posix paths relative to data_dir
    folders: dict[str, str]  # label -> folder name on disk
    ignored: list[str] = field(default_factory=list)


def scan_image_folder(data_dir) -> FolderScan:
    """List the images of every class folder (recursively), ignoring hidden and non-image files."""
    root = Path(data_dir)
    if not root.exists():
        raise UserError(f"data folder not found: {root}")
    if not root.is_dir():
        raise UserError(f"data path is not a folder: {root}")
    entries = [p for p in sorted(root.iterdir()) if not _is_ignored_name(p.name)]
    class_dirs = [p for p in entries if p.is_dir()]
    ignored = [p.name for p in entries if not p.is_dir()]
    if not class_dirs:
        if not entries:
            raise UserError(f"data folder is empty: {root} (expected one sub-folder of images per class, "
                            f"e.g. {root / 'dog' / '0001.jpg'})")
        raise UserError(f"no class sub-folders in {root}: found {_plural(len(entries), 'file')} but expected one "
                        f"sub-folder of images per class, e.g. {root / 'dog' / '0001.jpg'}")
    files: dict[str, list[str]] = {}
    folders: dict[str, str] = {}
    empty: list[str] = []
    for class_dir in class_dirs:
        label = english_label(class_dir.name)
        if label in folders:
            raise UserError(f"class folders '{folders[label]}' and '{class_dir.name}' in {root} are both "
                            f"class '{label}': merge them or rename one")
        folders[label] = class_dir.name
        images, others = _walk_class(root, class_dir)
        ignored += others
        if images:
            files[label] = images
        else:
            only = f" (only {_plural(len(others), 'non-image file')})" if others else ""
            empty.append(f"'{class_dir.name}'{only}")
    if empty:
        raise UserError(f"class folder{'s' if len(empty) > 1 else ''} with no images in {root}: "
                        + ", ".join(empty))
    if len(files) < 2:
        raise UserError(f"only one class folder ('{class_dirs[0].name}') in {root}: a classifier needs at "
                        "least 2 classes, one sub-folder each")
    return FolderScan(root, files, folders, ignored)


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def _is_ignored_name(name: str) -> bool:
    return name.startswith(".") or name in _IGNORED_NAMES


def walk_files(folder: Path) -> tuple[list[Path], list[Path]]:
    """(image files, other files) below `folder`, recursively, unsorted; hidden files and OS clutter skipped."""
    images, others = [], []
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        dirnames[:] = [d for d in dirnames if not _is_ignored_name(d)]
        for name in filenames:
            if not _is_ignored_name(name):
                path = Path(dirpath) / name
                (images if path.suffix.lower() in IMAGE_EXTENSIONS else others).append(path)
    return images, others


def _walk_class(root: Path, class_dir: Path) -> tuple[list[str], list[str]]:
    images, others = walk_files(class_dir)
    return tuple(sorted(p.relative_to(root).as_posix() for p in group) for group in (images, others))


def inspect_image_file(path) -> tuple[str | None, str | None]:
    """(sha1 of the bytes, why the file is unusable or None).

    JPEGs are decoded in draft mode (DCT scaled to 1/8): every byte is still entropy-decoded, so truncation is
    caught at a fraction of the cost. Other formats get PIL's verify() (PNG chunk CRCs, missing IEND) and a full
    load, since verify() alone does not inflate the pixel data.
    """
    try:
        data = Path(path).read_bytes()
    except OSError as err:
        return None, f"cannot be read ({err.strerror or err})"
    digest = hashlib.sha1(data).hexdigest()
    if not data:
        return digest, "empty file (0 bytes)"
    try:
        with Image.open(io.BytesIO(data)) as image:
            if image.format == "JPEG":
                image.draft(None, (1, 1))
                image.load()
                return digest, None
            image.verify()
        with Image.open(io.BytesIO(data)) as image:
            image.load()
    except UnidentifiedImageError:
        return digest, "not an image (unrecognised format)"
    except Image.DecompressionBombError as err:
        return digest, f"too large to decode safely ({err})"
    except Exception as err:  # PIL signals corrupt data with OSError, SyntaxError, ValueError, EOFError, ...
        return digest, f"corrupt or truncated image ({err})"
    return digest, None


def _inspect_all(root: Path, rel_paths: Sequence[str]) -> list[tuple[str | None, str | None]]:
    # PIL and hashlib release the GIL, so threads check a 4,500-image folder in seconds.
    with ThreadPoolExecutor(IO_WORKERS) as pool:
        return list(pool.map(lambda rel: inspect_image_file(root / rel), rel_paths))


# ---------------------------------------------------------------------------------------------- split

@dataclass
class SplitPlan:
    """A manifest and the findings that explain it."""
    rows: list[dict]
    skipped: list[dict] = field(default_factory=list)  # {path, reason}
    duplicates: list[dict] = field(default_factory=list)  # {kept, dropped: [...], labels: [...]}
    ignored: list[str] = field(default_factory=list)


def make_manifest(data_dir, train: int = 300, val: int = 75, test: int = 75, seed: int = 42,
                  proportional: bool = False, skip_bad: bool = False) -> list[dict]:
    """Rows {path, label, split, sha1}: exactly `train`/`val`/`test` images per class, chosen by `seed`."""
    return plan_splits(data_dir, train=train, val=val, test=test, seed=seed, proportional=proportional,
                       skip_bad=skip_bad).rows


def plan_splits(data_dir, *, train: int = 300, val: int = 75, test: int = 75, seed: int = 42,
                proportional: bool = False, skip_bad: bool = False) -> SplitPlan:
    """Scan, check every file, drop byte-identical copies, then split each class.

    Per class the sorted file list is shuffled by Random(f"{seed}/{label}") and cut test first, then val, then
    train: the test images stay the same when only the train count changes (learning curves), and a class's
    split does not depend on which other classes exist. Byte-identical files are reduced to the first copy by
    path, so no image can be in two splits. A class with fewer than train+val+test usable images is an error
    unless `proportional`, which splits such a class in the same ratio using all of its images.
    """
    counts = _check_counts(train, val, test)
    scan = scan_image_folder(data_dir)
    root = scan.data_dir
    all_paths = [p for label in sorted(scan.files) for p in scan.files[label]]
    label_of = {p: label for label in scan.files for p in scan.files[label]}
    sha1: dict[str, str] = {}
    bad: list[dict] = []
    for rel, (digest, problem) in zip(all_paths, _inspect_all(root, all_paths)):
        if problem:
            bad.append({"path": rel, "reason": problem})
        else:
            sha1[rel] = digest
    if bad and not skip_bad:
        listing = "\n".join(f"  {b['path']}: {b['reason']}" for b in bad)
        raise UserError(f"{len(bad)} bad image file{'s' if len(bad) > 1 else ''} in {root} "
                        f"(fix or remove them, or pass --skip-bad to leave them out):\n{listing}")
    if bad:
        log.warning("skipped %d bad image file%s:\n%s", len(bad), "s" if len(bad) > 1 else "",
                    "\n".join(f"  {b['path']}: {b['reason']}" for b in bad))
    duplicates = _duplicate_groups(sha1, label_of)
    dropped = {p for group in duplicates for p in group["dropped"]}
    if duplicates:
        log.warning("found %d group%s of byte-identical files; kept the first of each, left out %d cop%s:\n%s",
                    len(duplicates), "s" if len(duplicates) > 1 else "", len(dropped),
                    "ies" if len(dropped) > 1 else "y", "\n".join(_describe_duplicate(g) for g in duplicates))
    if scan.ignored:
        log.info("ignored %d non-image file%s: %s", len(scan.ignored), "s" if len(scan.ignored) > 1 else "",
                 ", ".join(scan.ignored[:10]) + (" ..." if len(scan.ignored) > 10 else ""))

    usable = {label: [p for p in paths if p in sha1 and p not in dropped] for label, paths in scan.files.items()}
    need = sum(counts)
    too_small = {label: len(paths) for label, paths in usable.items() if len(paths) < need}
    if too_small and not proportional:
        listing = ", ".join(f"'{label}' has {n}" for label, n in sorted(too_small.items()))
        raise UserError(f"class too small for train={train} val={val} test={test} ({need} images per class): "
                        f"{listing} usable images in {root}; lower the counts or pass --proportional")
    rows = []
    for label in sorted(usable):
        paths = usable[label]
        n_train, n_val, n_test = counts if label not in too_small else _proportional_counts(label, len(paths),
                                                                                             counts)
        order = list(paths)
        random.Random(f"{seed}/{label}").shuffle(order)
        chosen = {"test": order[:n_test], "val": order[n_test:n_test + n_val],
                  "train": order[n_test + n_val:n_test + n_val + n_train]}
        rows += [{"path": p, "label": label, "split": split, "sha1": sha1[p]}
                 for split, ps in chosen.items() for p in ps]
    rows.sort(key=lambda r: (SPLITS.index(r["split"]), r["label"], r["path"]))
    return SplitPlan(rows, bad, duplicates, scan.ignored)


def _check_counts(train: int, val: int, test: int) -> tuple[int, int, int]:
    # Every split is needed: training learns on train, picks its best epoch on val, reports on test.
    for name, value in (("train", train), ("val", val), ("test", test)):
        if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 1:
            raise UserError(f"--{name} must be an integer >= 1 (every run trains, validates and tests on images "
                            f"of its own), got {value!r}")
    return int(train), int(val), int(test)


def _proportional_counts(label: str, n: int, wanted: tuple[int, int, int]) -> tuple[int, int, int]:
    """Split n images in the ratio of `wanted` (largest remainder), at least one in each split asked for."""
    asked = [i for i, w in enumerate(wanted) if w]
    if n < len(asked):
        raise UserError(f"class '{label}' has only {n} usable image{'s' if n != 1 else ''}: even a proportional "
                        f"split needs at least {len(asked)} (one per split)")
    total = sum(wanted)
    raw = [n * w / total for w in wanted]
    counts = [int(r) for r in raw]
    for i in sorted(range(3), key=lambda i: raw[i] - counts[i], reverse=True)[: n - sum(counts)]:
        counts[i] += 1
    for i in asked:
        if counts[i] == 0:
            counts[max(range(3), key=lambda k: counts[k])] -= 1
            counts[i] += 1
    return counts[0], counts[1], counts[2]


def _duplicate_groups(sha1: dict[str, str], label_of: dict[str, str]) -> list[dict]:
    by_hash: dict[str, list[str]] = defaultdict(list)
    for path in sorted(sha1):
        by_hash[sha1[path]].append(path)
    groups = [paths for paths in by_hash.values() if len(paths) > 1]
    return [{"kept": paths[0], "dropped": paths[1:], "labels": sorted({label_of[p] for p in paths})}
            for paths in sorted(groups)]


def _describe_duplicate(group: dict) -> str:
    text = f"  kept {group['kept']}, left out {', '.join(group['dropped'])}"
    if len(group["labels"]) > 1:
        text += f" (same image in classes {', '.join(group['labels'])}: check its label)"
    return text


# ---------------------------------------------------------------------------------------------- manifest

def write_manifest(rows: Sequence[dict], path) -> Path:
    """Write splits.csv (columns path, label, split, sha1) atomically; returns its path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=MANIFEST_COLUMNS, extrasaction="ignore", lineterminator="\n")
        writer.writeheader()
        writer.writerows({**{"sha1": ""}, **row} for row in rows)
    os.replace(tmp, path)
    return path


def read_manifest(path, data_dir=None, verify: bool = True) -> list[dict]:
    """Rows of a splits.csv, checked for shape; with `verify`, also that every file is there, unchanged.

    `data_dir` defaults to the folder recorded in splits.json next to the manifest, else the manifest's folder.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"manifest not found: {path} (make one with scripts/prepare_data.py)")
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        missing = [c for c in ("path", "label", "split") if c not in (reader.fieldnames or [])]
        if missing:
            raise UserError(f"manifest {path} lacks column{'s' if len(missing) > 1 else ''} "
                            f"{', '.join(missing)} (needs path, label, split)")
        rows = [{"path": r["path"], "label": r["label"], "split": r["split"], "sha1": r.get("sha1") or ""}
                for r in reader]
    if not rows:
        raise UserError(f"manifest {path} has no rows")
    seen_path: set[str] = set()
    split_of_hash: dict[str, tuple[str, str]] = {}
    for line, row in enumerate(rows, start=2):
        if row["split"] not in SPLITS:
            raise UserError(f"manifest {path} line {line}: split must be train, val or test, got {row['split']!r}")
        if not row["path"] or not row["label"]:
            raise UserError(f"manifest {path} line {line}: empty path or label")
        if row["path"] in seen_path:
            raise UserError(f"manifest {path} line {line}: {row['path']} is listed twice")
        seen_path.add(row["path"])
        if row["sha1"]:
            other = split_of_hash.setdefault(row["sha1"], (row["path"], row["split"]))
            if other[1] != row["split"]:
                raise UserError(f"manifest {path}: {other[0]} ({other[1]}) and {row['path']} ({row['split']}) "
                                "are byte-identical but in different splits")
    if verify:
        verify_manifest_files(rows, manifest_data_dir(path, data_dir), path)
    return rows


def verify_manifest_files(rows: Sequence[dict], data_dir, manifest_path="manifest") -> None:
    """UserError naming every file of the manifest that is missing or whose bytes changed (sha1)."""
    root = Path(data_dir)
    if not root.is_dir():
        raise UserError(f"data folder not found: {root} (needed by manifest {manifest_path})")

    def problem(row: dict) -> str | None:
        file = root / row["path"]
        if not file.is_file():
            return "missing"
        if row["sha1"] and _sha1_of_file(file) != row["sha1"]:
            return "changed"
        return None

    with ThreadPoolExecutor(IO_WORKERS) as pool:
        problems = [(row["path"], p) for row, p in zip(rows, pool.map(problem, rows)) if p]
    if problems:
        shown = "\n".join(f"  {rel}: {p}" for rel, p in problems[:20])
        more = f"\n  ... and {len(problems) - 20} more" if len(problems) > 20 else ""
        hint = " (is the data folder right?)" if len(problems) == len(rows) else ""
        raise UserError(f"manifest {manifest_path} no longer matches the files in {root}{hint}: "
                        f"{len(problems)} of {len(rows)} files missing or changed; restore them or make a new "
                        f"split (prepare_data.py --overwrite):\n{shown}{more}")


def _sha1_of_file(path: Path) -> str:
    digest = hashlib.sha1()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def manifest_data_dir(manifest_path, data_dir=None) -> Path:
    """The image folder of a manifest: `data_dir` if given, else the one splits.json records, else its folder."""
    manifest_path = Path(manifest_path)
    if data_dir is not None:
        return Path(data_dir)
    info = read_manifest_info(manifest_path)
    if info and info.get("data_dir"):
        return Path(info["data_dir"])
    return manifest_path.parent


def read_manifest_info(manifest_path) -> dict | None:
    """The splits.json written next to a manifest by prepare_splits (options, skipped, duplicates), if any."""
    info = Path(manifest_path).with_name(MANIFEST_INFO_NAME)
    if not info.is_file():
        return None
    try:
        return json.loads(info.read_text())
    except json.JSONDecodeError as err:
        raise UserError(f"cannot read {info}: {err}") from None


def manifest_hash(path) -> str:
    """Content hash of a manifest (16 hex chars): names caches and records which split a run used."""
    try:
        return hashlib.sha256(Path(path).read_bytes()).hexdigest()[:16]
    except FileNotFoundError:
        raise UserError(f"manifest not found: {path}") from None


def prepare_splits(data_dir, output_dir, *, train: int = 300, val: int = 75, test: int = 75, seed: int = 42,
                   proportional: bool = False, skip_bad: bool = False, reuse: bool = True) -> Path:
    """Write output_dir/splits.csv (+ splits.json) and return its path.

    With `reuse`, an existing manifest there is checked (same options, files unchanged) and kept, so every model
    of a study, and every re-run, trains and tests on the same images.
    """
    out = Path(output_dir)
    if out.exists() and not out.is_dir():
        raise UserError(f"output path is not a folder: {out}")
    manifest = out / MANIFEST_NAME
    options = {"train": train, "val": val, "test": test, "seed": seed, "proportional": proportional}
    if reuse and manifest.exists():
        info = read_manifest_info(manifest)
        old = (info or {}).get("options")
        if old is not None and {k: old.get(k) for k in options} != options:
            raise UserError(f"{manifest} was made with {_format_options(old)}, not {_format_options(options)}: "
                            "pass the same options to reuse it, or --overwrite to make a new split")
        read_manifest(manifest, data_dir, verify=True)
        log.info("reusing %s (all files present and unchanged)", manifest)
        return manifest
    plan = plan_splits(data_dir, train=train, val=val, test=test, seed=seed, proportional=proportional,
                       skip_bad=skip_bad)
    write_manifest(plan.rows, manifest)
    info = {"data_dir": str(Path(data_dir).resolve()), "options": options, "skip_bad": skip_bad,
            "manifest_sha256": manifest_hash(manifest), "num_images": len(plan.rows),
            "class_names": class_names(plan.rows), "skipped": plan.skipped, "duplicates": plan.duplicates,
            "ignored": plan.ignored}
    (out / MANIFEST_INFO_NAME).write_text(json.dumps(info, indent=1) + "\n")
    return manifest


def _format_options(options: dict) -> str:
    text = " ".join(f"{k}={options.get(k)}" for k in ("train", "val", "test", "seed"))
    return text + (" proportional" if options.get("proportional") else "")


def split_table(rows: Iterable[dict]) -> str:
    """Per-class image counts per split, with a total row (what prepare_data.py prints)."""
    counts: dict[str, dict[str, int]] = defaultdict(lambda: dict.fromkeys(SPLITS, 0))
    for row in rows:
        counts[row["label"]][row["split"]] += 1
    names = sorted(counts)
    width = max([len("class"), len("total")] + [len(n) for n in names])
    lines = [f"{'class':<{width}}  " + "  ".join(f"{c:>6}" for c in (*SPLITS, "total"))]
    totals = dict.fromkeys(SPLITS, 0)
    for name in names:
        c = counts[name]
        for s in SPLITS:
            totals[s] += c[s]
        lines.append(f"{name:<{width}}  " + "  ".join(f"{v:>6}" for v in (*(c[s] for s in SPLITS), sum(c.values()))))
    lines.append(f"{'total':<{width}}  "
                 + "  ".join(f"{v:>6}" for v in (*(totals[s] for s in SPLITS), sum(totals.values()))))
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------- datasets

def load_image_dataset(data_dir, rows: Sequence[dict]):
    """A `datasets.DatasetDict` (train/val/test) with columns image (lazy, from the file), label, path.

    Built with Dataset.from_dict over the manifest's files instead of the imagefolder builder: the manifest,
    not a directory listing, decides the split, and Italian folders get English ClassLabel names.
    """
    from datasets import ClassLabel, Dataset, DatasetDict, Features, Value
    from datasets import Image as ImageFeature

    root = Path(data_dir)
    names = class_names(rows)
    index = {name: i for i, name in enumerate(names)}
    features = Features({"image": ImageFeature(), "label": ClassLabel(names=names), "path": Value("string")})
    out = DatasetDict()
    for split in SPLITS:
        part = [r for r in rows if r["split"] == split]
        out[split] = Dataset.from_dict({"image": [str(root / r["path"]) for r in part],
                                        "label": [index[r["label"]] for r in part],
                                        "path": [r["path"] for r in part]}, features=features)
    return out
