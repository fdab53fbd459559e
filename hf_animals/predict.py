"""Predict a folder of unlabelled images with a saved model, and write a Kaggle-style submission CSV.

The model comes from a run folder, a folder saved by this project, or `hf-hub:USER/NAME`, all through
`models.load_model` (timm's `local-dir:` / `hf-hub:` loader). Classes come from the saved config.json and the
preprocessing from the model's own timm `pretrained_cfg` (`preprocess.Preprocessing`), so images go through exactly
the training/evaluation path, and through the same resize a plain timm user gets. Labels are by default the class
folder names of the training data (Italian for Animals-10's folders). Kaggle specifics (ID from the file name,
numeric order, a sample submission's header and row order) are hand-written: no library has them.
"""
from __future__ import annotations

import csv
import json
import os
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import torch

from . import data as hfdata
from . import models as hfmodels
from . import precision as hfprecision
from . import recipe
from .errors import UserError
from .preprocess import Preprocessing

#: folder: the class folder names of the training data (the default); it: Animals-10's Italian names; en: the
#: English class names; index: the class number.
LABEL_LANGUAGES = ("folder", "it", "en", "index")
DEFAULT_LABEL_LANGUAGE = "folder"
ID_SOURCES = ("stem", "name", "relpath")
DEFAULT_ID_COLUMN = "ID"
DEFAULT_LABEL_COLUMN = "Label"


# ----------------------------------------------------------------------------------------------------------------
# The model
# ----------------------------------------------------------------------------------------------------------------
def saved_config(source: str | os.PathLike) -> dict:
    """config.json of a saved model: from its folder, or from the Hub (the copy timm just cached)."""
    text = str(source)
    prefix, sep, rest = text.partition(":")
    if sep and prefix in ("hf-hub", "hf_hub"):
        from huggingface_hub import hf_hub_download

        repo_id, _, revision = rest.partition("@")
        try:
            path = Path(hf_hub_download(repo_id, "config.json", revision=revision or None))
        except Exception as err:  # offline and not cached, 404, ...: models.load_model already said why, in detail
            raise UserError(f"cannot read config.json of {text}: {type(err).__name__}: {err}") from None
    else:
        folder = Path(rest if sep and prefix == "local-dir" else text)
        path = folder / "config.json"
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise UserError(f"cannot read {path}: {err}") from None


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


@dataclass
class Predictor:
    """A loaded model with the preprocessing it was trained with; `predict_*` return class probabilities."""

    model: torch.nn.Module
    class_names: list[str]  # label index -> English class name (config.json label_names)
    preprocessing: Preprocessing  # read from the model's pretrained_cfg
    device: torch.device
    source: str
    batch_size: int = 64
    label_folders: list[str] | None = None  # label index -> class folder name in the training data, when recorded
    tta: bool = False  # average the softmax of each image and its mirror image (recipe.tta_probabilities)
    precision: str = "no"  # resolved autocast precision of inference: no / fp16 / bf16 (precision.py)

    @property
    def image_size(self) -> int:
        return self.preprocessing.image_size

    @property
    def mean(self) -> tuple[float, ...]:
        return self.preprocessing.mean

    @property
    def std(self) -> tuple[float, ...]:
        return self.preprocessing.std

    @torch.no_grad()
    def predict_pixels(self, pixels_uint8: torch.Tensor) -> torch.Tensor:
        """(N, classes) float32 probabilities on the CPU for uint8 (N, 3, S, S) images, in batches."""
        out = []
        for i in range(0, len(pixels_uint8), self.batch_size):
            x = pixels_uint8[i:i + self.batch_size].to(self.device, non_blocking=True)
            net = lambda v: self.model(self.preprocessing.normalize(v))  # noqa: E731
            with hfprecision.inference_autocast(self.device, self.precision):
                probs = recipe.tta_probabilities(net, x) if self.tta else net(x).float().softmax(1)
            out.append(probs.cpu())
        return torch.cat(out) if out else torch.zeros(0, len(self.class_names))

    def load_pixels(self, path: str | os.PathLike) -> torch.Tensor:
        """uint8 (3, S, S): the decode/resize of training (UserError naming an unreadable file)."""
        return self.preprocessing.load(path)

    def predict_paths(self, paths: Sequence[str | os.PathLike]) -> torch.Tensor:
        """(N, classes) probabilities of image files (all must be readable)."""
        if not paths:
            return torch.zeros(0, len(self.class_names))
        return self.predict_pixels(torch.stack([self.load_pixels(p) for p in paths]))


def load_predictor(source: str | os.PathLike, *, device: str | torch.device | None = None,
                   batch_size: int = 64, tta: bool = False, mixed_precision: str | None = "auto") -> Predictor:
    """A Predictor for a run folder, a saved-model folder, 'local-dir:DIR', 'hf-hub:USER/NAME' or an exported .onnx.

    Preprocessing: the model's pretrained_cfg only (where training wrote it, and where timm reads it); label folder
    names: config.json's `label_folders` (absent in models saved before they were recorded).
    Precision: `auto` runs inference under bf16/fp16 autocast where the device has it natively (as training does).
    """
    from . import onnx_model  # an exported file: same Predictor, the model runs in onnxruntime

    if onnx_model.is_onnx_file(source):
        return onnx_model.load_onnx_predictor(source, device=device, batch_size=batch_size, tta=tta)
    device = torch.device(device) if device is not None else default_device()
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda was asked for but no CUDA GPU is available")
    try:
        precision = hfprecision.resolve_mixed_precision(mixed_precision, device)
    except ValueError as err:
        raise UserError(str(err)) from None
    model, class_names = hfmodels.load_model(source)
    preprocessing = Preprocessing.from_pretrained_cfg(model.pretrained_cfg)
    folders = saved_config(source).get("label_folders")
    label_folders = list(folders) if folders and len(folders) == len(class_names) else None
    return Predictor(model.to(device).eval(), list(class_names), preprocessing, device, str(source), batch_size,
                     label_folders, tta, precision)


# ----------------------------------------------------------------------------------------------------------------
# The images
# ----------------------------------------------------------------------------------------------------------------
def natural_key(text: str) -> tuple:
    """'2.jpg' before '10.jpg': digit runs compare as numbers (re.split keeps text at even, numbers at odd places)."""
    parts = re.split(r"(\d+)", text)
    return tuple(int(p) if i % 2 else p.lower() for i, p in enumerate(parts)), text


def list_images(images_dir: str | os.PathLike) -> tuple[list[Path], list[Path]]:
    """(image files, other files) under `images_dir`, recursively, in natural order of their relative paths."""
    root = Path(images_dir)
    if not root.is_dir():
        raise UserError(f"--images {root} is not a folder")
    images, others = hfdata.walk_files(root)
    order = lambda p: natural_key(p.relative_to(root).as_posix())  # noqa: E731
    return sorted(images, key=order), sorted(others, key=order)


def image_id(path: Path, root: Path, id_from: str) -> str:
    if id_from == "stem":
        return path.stem
    if id_from == "name":
        return path.name
    return path.relative_to(root).as_posix()


class _ImageFiles(torch.utils.data.Dataset):
    """Decodes in DataLoader workers; an unreadable file yields its error message instead of pixels."""

    def __init__(self, paths: list[Path], preprocessing: Preprocessing):
        self.paths, self.preprocessing = paths, preprocessing

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        try:
            return self.preprocessing.load(self.paths[i]), ""
        except UserError as err:
            size = self.preprocessing.image_size
            return torch.zeros(3, size, size, dtype=torch.uint8), str(err)


@dataclass
class FolderPrediction:
    root: Path
    paths: list[Path]  # readable images, natural order
    probabilities: torch.Tensor  # (len(paths), classes)
    class_names: list[str]
    unreadable: list[tuple[Path, str]] = field(default_factory=list)
    ignored: list[Path] = field(default_factory=list)  # files that are not images (by extension)
    label_folders: list[str] | None = None  # the class folder names of the training data, when recorded


def predict_folder(predictor: Predictor, images_dir: str | os.PathLike, *, num_workers: int = 0) -> FolderPrediction:
    """Probabilities for every readable image under `images_dir`, batched, in a deterministic order."""
    root = Path(images_dir)
    images, others = list_images(root)
    if not images:
        raise UserError(f"no image files ({', '.join(sorted(hfdata.IMAGE_EXTENSIONS))}) under {root}")
    loader = torch.utils.data.DataLoader(_ImageFiles(images, predictor.preprocessing), batch_size=predictor.batch_size,
                                         shuffle=False, num_workers=num_workers,
                                         pin_memory=predictor.device.type == "cuda")
    probs, kept, unreadable = [], [], []
    offset = 0
    for pixels, errors in loader:
        ok = torch.tensor([not e for e in errors], dtype=torch.bool)
        for j, err in enumerate(errors):
            (unreadable.append((images[offset + j], err)) if err else kept.append(images[offset + j]))
        offset += len(errors)
        if ok.any():
            probs.append(predictor.predict_pixels(pixels[ok]))
    probabilities = torch.cat(probs) if probs else torch.zeros(0, len(predictor.class_names))
    return FolderPrediction(root, kept, probabilities, predictor.class_names, unreadable, others,
                            predictor.label_folders)


# ----------------------------------------------------------------------------------------------------------------
# The submission
# ----------------------------------------------------------------------------------------------------------------
def output_labels(class_names: Sequence[str], language: str,
                  label_folders: Sequence[str] | None = None) -> list[str]:
    """Label written for each class index.

    folder: the class folder name of the training data, exactly (Animals-10's 'cane', an English 'dog', any other
    class); a model saved without its folder names gives its class names. it: Animals-10's Italian name (only for
    Animals-10's classes); en: the English class name; index: the class number.
    """
    if language == "folder":
        return list(label_folders) if label_folders else list(class_names)
    if language == "index":
        return [str(i) for i in range(len(class_names))]
    if language == "en":
        return list(class_names)
    if language != "it":
        raise UserError(f"unknown --label-language {language!r}; choose from {', '.join(LABEL_LANGUAGES)}")
    missing = [c for c in class_names if c not in hfdata.ENGLISH_TO_ITALIAN]
    if missing:
        raise UserError(f"class(es) {', '.join(missing)} have no Animals-10 (Italian) name; "
                        f"use --label-language en or index")
    return [hfdata.ENGLISH_TO_ITALIAN[c] for c in class_names]


def _few(items: Sequence, n: int = 5) -> str:
    shown = ", ".join(str(i) for i in items[:n])
    return shown + (f" (+{len(items) - n} more)" if len(items) > n else "")


def read_sample_submission(path: str | os.PathLike) -> tuple[list[str], list[list[str]]]:
    """(header, rows) of a sample submission, checked: a header of 2+ columns, unique ids in its first column."""
    path = Path(path)
    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:  # utf-8-sig: Excel's BOM is not part of the header
            table = [row for row in csv.reader(fh) if row]
    except OSError as err:
        raise UserError(f"cannot read --sample-submission {path}: {err}") from None
    if not table or len(table[0]) < 2:
        raise UserError(f"--sample-submission {path} needs a header with an id and a label column")
    header, rows = table[0], table[1:]
    if not rows:
        raise UserError(f"--sample-submission {path} has a header but no rows")
    bad = [i + 2 for i, r in enumerate(rows) if len(r) != len(header)]
    if bad:
        raise UserError(f"--sample-submission {path}: line(s) {_few(bad)} do not have {len(header)} columns")
    return header, rows


def _ids_by(prediction: FolderPrediction, id_from: str, paths: Sequence[Path]) -> dict[str, int]:
    """id -> row of `paths`; two files with one id is an error (suggesting a finer --id-from)."""
    index: dict[str, int] = {}
    clashes = []
    for i, p in enumerate(paths):
        key = image_id(p, prediction.root, id_from)
        if key in index:
            clashes.append(f"{paths[index[key]].relative_to(prediction.root)} & {p.relative_to(prediction.root)}")
        index[key] = i
    if clashes:
        finer = "name or relpath" if id_from == "stem" else "relpath"
        raise UserError(f"several images share an id (--id-from {id_from}): {_few(clashes)}; use --id-from {finer}")
    return index


@dataclass
class Submission:
    header: list[str]
    rows: list[list[str]]
    id_from: str
    label_counts: Counter


def make_submission(prediction: FolderPrediction, *, label_language: str = DEFAULT_LABEL_LANGUAGE, id_column: str | None = None,
                    label_column: str | None = None, id_from: str | None = None,
                    sample_submission: str | os.PathLike | None = None, probabilities: bool = False) -> Submission:
    """The submission table. Without a sample: header `ID,Label`, one row per image, ids in numeric order.

    With a sample submission: its header, its rows in its order (other columns copied), every id must have a readable
    image and every image an id. id_from None: 'stem', or with a sample the id kind that matches its ids.
    """
    if id_from is not None and id_from not in ID_SOURCES:
        raise UserError(f"unknown --id-from {id_from!r}; choose from {', '.join(ID_SOURCES)}")
    labels = output_labels(prediction.class_names, label_language, prediction.label_folders)
    predicted = prediction.probabilities.argmax(1).tolist()
    prob_columns = [f"prob_{label}" for label in labels] if probabilities else []

    def prob_cells(i: int) -> list[str]:
        return [f"{p:.6f}" for p in prediction.probabilities[i].tolist()] if probabilities else []

    if sample_submission is None:
        id_from = id_from or "stem"
        index = _ids_by(prediction, id_from, prediction.paths)
        header = [id_column or DEFAULT_ID_COLUMN, label_column or DEFAULT_LABEL_COLUMN] + prob_columns
        rows = [[key, labels[predicted[i]], *prob_cells(i)]
                for key, i in sorted(index.items(), key=lambda kv: natural_key(kv[0]))]
        return Submission(header, rows, id_from, Counter(r[1] for r in rows))

    header, sample_rows = read_sample_submission(sample_submission)
    id_column = id_column or header[0]
    label_column = label_column or header[1]
    for flag, column in (("--id-column", id_column), ("--label-column", label_column)):
        if column not in header:
            raise UserError(f"{flag} {column!r} is not a column of {sample_submission} (header: {','.join(header)})")
    id_pos, label_pos = header.index(id_column), header.index(label_column)
    sample_ids = [r[id_pos] for r in sample_rows]
    dupes = sorted({k for k, n in Counter(sample_ids).items() if n > 1})
    if dupes:
        raise UserError(f"{sample_submission} lists id(s) more than once: {_few(dupes)}")
    all_paths = prediction.paths + [p for p, _ in prediction.unreadable]
    if id_from is None:  # the id kind that names the sample's rows: '10', '10.jpg' or 'sub/10.jpg'
        wanted = set(sample_ids)
        id_from = max(ID_SOURCES, key=lambda k: (len(wanted & {image_id(p, prediction.root, k) for p in all_paths}),
                                                  k == "stem"))
    index = _ids_by(prediction, id_from, all_paths)
    missing = [k for k in sample_ids if k not in index]
    if missing:
        raise UserError(f"{len(missing)} id(s) of {sample_submission} have no image in {prediction.root} "
                        f"(--id-from {id_from}): {_few(missing)}")
    extra = sorted(set(index) - set(sample_ids), key=natural_key)
    if extra:
        raise UserError(f"{len(extra)} image(s) in {prediction.root} have no row in {sample_submission} "
                        f"(--id-from {id_from}): {_few(extra)}")
    unreadable = [image_id(p, prediction.root, id_from) for p, _ in prediction.unreadable]
    if unreadable:
        raise UserError(f"{len(unreadable)} image(s) listed in {sample_submission} cannot be read, so their rows "
                        f"cannot be filled: {_few(unreadable)}")
    rows = []
    for row in sample_rows:
        i = index[row[id_pos]]
        row = list(row)
        row[label_pos] = labels[predicted[i]]
        rows.append(row + prob_cells(i))
    return Submission(header + prob_columns, rows, id_from, Counter(r[label_pos] for r in rows))


def write_csv(submission: Submission, output: str | os.PathLike) -> Path:
    """Write atomically: an interrupted run never leaves half a submission."""
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = output.with_name(output.name + ".tmp")
    with open(tmp, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow(submission.header)
        writer.writerows(submission.rows)
    os.replace(tmp, output)
    return output


@dataclass
class PredictResult:
    output: Path
    submission: Submission
    prediction: FolderPrediction
    predictor: Predictor


def predict_to_csv(model: str | os.PathLike, images: str | os.PathLike, output: str | os.PathLike, *,
                   label_language: str = DEFAULT_LABEL_LANGUAGE, id_column: str | None = None, label_column: str | None = None,
                   id_from: str | None = None, sample_submission: str | os.PathLike | None = None,
                   probabilities: bool = False, batch_size: int = 64, device: str | None = None,
                   num_workers: int = 0, mixed_precision: str | None = "auto", tta: bool = False) -> PredictResult:
    """Load `model`, predict every image under `images`, write the submission CSV (the whole of scripts/predict.py)."""
    output_labels(["dog"], label_language)  # a bad flag fails before the model loads
    if sample_submission is not None:
        read_sample_submission(sample_submission)
    predictor = load_predictor(model, device=device, batch_size=batch_size, mixed_precision=mixed_precision,
                               tta=tta)
    output_labels(predictor.class_names, label_language, predictor.label_folders)
    prediction = predict_folder(predictor, images, num_workers=num_workers)
    submission = make_submission(prediction, label_language=label_language, id_column=id_column,
                                 label_column=label_column, id_from=id_from, sample_submission=sample_submission,
                                 probabilities=probabilities)
    return PredictResult(write_csv(submission, output), submission, prediction, predictor)


# ----------------------------------------------------------------------------------------------------------------
# A run's own split (scripts/export.py checks the ONNX file on it; the app shows its images as examples)
# ----------------------------------------------------------------------------------------------------------------
def run_split_images(run_dir: str | os.PathLike, split: str = "test",
                     data_dir: str | os.PathLike | None = None) -> list[tuple[Path, str]]:
    """[(image file, label)] of one split of a run's splits.csv, in manifest order, every file checked (sha1).

    The data folder: `data_dir`, else run.json's --data-dir, else the one recorded in splits.json.
    """
    from .hub import splits_file

    run_dir = Path(run_dir)
    try:
        run = json.loads((run_dir / "run.json").read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise UserError(f"{run_dir} is not a run folder (cannot read run.json: {err})") from None
    manifest = splits_file(run_dir, run)
    if manifest is None:
        raise UserError(f"{run_dir} has no splits.csv (nor does run.json name one)")
    root = hfdata.manifest_data_dir(manifest, data_dir or (run.get("args") or {}).get("data_dir"))
    rows = hfdata.read_manifest(manifest, root, verify=True)
    return [(root / r["path"], r["label"]) for r in rows if r["split"] == split]
