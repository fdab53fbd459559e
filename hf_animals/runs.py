"""The run record: what a run folder holds, how to read it, when it is complete, and which run is best.

Every reader of a run folder (study, report, model card, push, predict, app, export, benchmark) goes through
`load_run`, so a file name, a completeness rule or a tie rule exists once. The record is typed: later code reads
`record.weights.pretrained`, never re-parses `--unfreeze` strings or `pretrained_source` prefixes.

This module reads and selects; it computes nothing new (training writes the files, see `training`).
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, TypeVar

from . import catalogue
from .errors import UserError

# The model in timm's Hub layout: loads with timm.create_model("local-dir:RUN", pretrained=True).
MODEL_FILES = ("config.json", "model.safetensors")
RUN_JSON = "run.json"  # written last: its status 'complete' is what makes a run finished
METRICS_JSON = "metrics.json"
HISTORY_FILES = ("history.json", "history.csv")
FIGURES = ("curves.png", "confusion_matrix.png", "misclassified.png")
#: Files a finished run must have (figures are optional: a reader can redraw them from the data).
REQUIRED_FILES = (*MODEL_FILES, RUN_JSON, METRICS_JSON, "history.json")
#: Everything training writes at the top of a run folder: an `--overwrite` may replace a folder holding these.
RUN_FILES = (*MODEL_FILES, *HISTORY_FILES, METRICS_JSON, RUN_JSON)
CHECKPOINT_DIR = "checkpoint"  # last-epoch state for --resume (model, optimizer, scheduler, scaler, RNG)
SPLITS_FILE = "splits.csv"


def read_json(path: Path) -> Any:
    """A JSON file, or a UserError naming it (missing or not JSON)."""
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise UserError(f"{path} is missing") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise UserError(f"{path} cannot be read as JSON ({err})") from None


def write_json(path: Path, obj: Any) -> None:
    """Write a run-folder JSON file atomically: an interrupted write never leaves half a file."""
    path = Path(path)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, default=_json_default))
    os.replace(tmp, path)


def _json_default(obj: Any) -> Any:
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "item"):  # numpy / torch scalars
        return obj.item()
    raise TypeError(type(obj))


def write_history(run_dir: Path, history: list[dict]) -> None:
    """history.json (the record) and history.csv (for spreadsheets), one row per epoch."""
    write_json(Path(run_dir) / HISTORY_FILES[0], history)
    if history:
        cols = list(history[0])
        lines = [",".join(cols)] + [",".join(_csv_cell(row[c]) for c in cols) for row in history]
        (Path(run_dir) / HISTORY_FILES[1]).write_text("\n".join(lines) + "\n")


def _csv_cell(value: Any) -> str:
    return f"{value:.6g}" if isinstance(value, float) else str(value)


def is_complete(run_dir: str | Path) -> bool:
    """A run is complete once run.json (written last, after the test evaluation) says status 'complete'."""
    path = Path(run_dir) / RUN_JSON
    try:
        return json.loads(path.read_text()).get("status") == "complete"
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, AttributeError):
        return False


def require_complete(run_dir: str | Path) -> Path:
    """The path of a finished run folder, else a UserError saying what it lacks and how to finish it."""
    run = Path(run_dir)
    if not run.is_dir():
        raise UserError(f"run folder {run} does not exist or is not a folder")
    missing = [name for name in REQUIRED_FILES if not (run / name).is_file()]
    if missing:
        raise UserError(f"{run} is not a finished run folder: missing {', '.join(missing)}")
    if not is_complete(run):
        raise UserError(f"{run}/{RUN_JSON} does not say status 'complete': finish the run (train.py --resume) first")
    return run


@dataclass
class RunRecord:
    """One finished run: its folder and the parsed run.json, metrics.json, history.json and config.json."""

    path: Path
    run: dict
    metrics: dict
    history: list[dict]
    config: dict = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def model(self) -> str:
        return self.run["model"]

    @property
    def unfreeze(self) -> str:
        return self.run["unfreeze"]

    @property
    def family(self) -> catalogue.Family | None:
        return catalogue.family_of(self.model)

    @property
    def regime(self) -> catalogue.Regime | None:
        """The protocol row this run followed, if it is one of the study's."""
        return catalogue.regime_of(self.model, self.unfreeze)

    @property
    def weights(self) -> catalogue.WeightSource:
        return catalogue.weight_source(self.run.get("pretrained_source", ""), self.model)

    @property
    def head_only(self) -> bool:
        """Recorded by training from the applied regime (the module really unfrozen), not re-parsed."""
        return bool(self.run.get("head_only"))

    @property
    def class_names(self) -> list[str]:
        return list(self.run.get("class_names") or self.metrics.get("class_names") or [])

    @property
    def image_size(self) -> int:
        return int(self.run["image_size"])

    @property
    def best_val_accuracy(self) -> float:
        return float(self.run["best_val_accuracy"])

    @property
    def test_accuracy(self) -> float:
        return float(self.metrics["accuracy"])

    def get(self, key: str, default: Any = None) -> Any:
        """A run.json value (cost columns, arguments, ...)."""
        return self.run.get(key, default)


def load_run(run_dir: str | Path) -> RunRecord:
    """The record of a finished run folder (UserError if it is not one)."""
    run = require_complete(run_dir)
    config = read_json(run / "config.json")
    return RunRecord(run, read_json(run / RUN_JSON), read_json(run / METRICS_JSON), read_json(run / "history.json"),
                     config)


# ----------------------------------------------------------------------------------------------------------------
# Selection
# ----------------------------------------------------------------------------------------------------------------
T = TypeVar("T", bound=Mapping)


#: `selection_key` in words, for the report and cards (kept beside the rule so the two cannot drift apart).
SELECTION_RULE = ("the highest validation accuracy; on a tie, the cheaper run (total time: one-time caches + "
                  "training), then the run name; "
                  "the test split never chooses")


def selection_key(row: Mapping) -> tuple:
    """Order of preference: higher validation accuracy; on a tie the cheaper run (total time including one-time
    caches when known, else training time); then the run name, so the choice never depends on listing order.

    Validation only: the test split never chooses.
    """
    cost = row.get("total_s")
    if cost is None:
        cost = row.get("train_time_s") or 0.0
    return (-float(row["best_val_accuracy"]), float(cost), str(row.get("run", "")))


def select_best(rows: Iterable[T]) -> T | None:
    """The best of some runs (comparison rows or any mappings with `best_val_accuracy`, optional `total_s` /
    `train_time_s` and `run`): THE selection rule of the study, the report, the model cards and the benchmark."""
    return min(rows, key=selection_key, default=None)


def best_by(rows: Iterable[T], group: str) -> dict[str, T]:
    """{value of `group`: best row} e.g. the best final run of every family."""
    groups: dict[str, list[T]] = {}
    for row in rows:
        groups.setdefault(row[group], []).append(row)
    return {key: select_best(members) for key, members in groups.items()}


def library_versions() -> dict[str, str]:
    """Versions of what a run depends on, for run.json (so a run can be reproduced, or its numbers questioned)."""
    import platform

    import torch
    import accelerate
    import datasets
    import evaluate
    import huggingface_hub
    import timm
    import torchvision

    mods = (torch, torchvision, timm, datasets, accelerate, evaluate, huggingface_hub)
    versions = {m.__name__: m.__version__ for m in mods}
    versions["python"] = platform.python_version()
    return versions
