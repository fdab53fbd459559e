"""Resume state: one folder per saved epoch, complete or ignored, so a kill at any moment loses at most one epoch.

    run/checkpoint/epoch-0003/   model, optimizer, scheduler, scaler, RNG of every process (accelerator.save_state)
                              └─ trainer_state.json   written last and atomically: its presence makes the folder
                                                      complete; only then are older epochs removed

`--resume` continues from the newest complete folder (`latest`). Writing over one folder in place (the old layout)
could leave epoch N's weights beside epoch N-1's optimizer state after a kill during the save.
"""
from __future__ import annotations

import dataclasses
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

from . import runs
from .errors import UserError

STATE_FILE = "trainer_state.json"
EPOCH_PREFIX = "epoch-"


@dataclass
class TrainerState:
    """Where a run stands after an epoch: its history, best epoch and timings."""

    epoch: int = 0
    best_val_accuracy: float = -1.0
    best_epoch: int = 0
    history: list[dict] = field(default_factory=list)
    train_time_s: float = 0.0
    time_to_best_s: float = 0.0
    cache_s: float = 0.0  # the frozen-prefix feature cache (run.json's feature_cache_s)
    image_cache_s: float = 0.0  # the decoded-image cache (older checkpoints lack it: 0)
    best_weights: str = "raw"  # 'ema' when the best validation accuracy came from the EMA weights (--ema)

    def record(self, row: dict) -> bool:
        """Add one epoch's history row; True when its validation accuracy, raw or EMA (`val_acc_ema`, when there),
        beats every earlier epoch. The EMA wins only when strictly better than the raw weights of its epoch."""
        self.history.append(row)
        self.train_time_s += row["epoch_time_s"]
        self.epoch = row["epoch"]
        ema = row.get("val_acc_ema")
        weights, acc = ("ema", ema) if ema is not None and ema > row["val_acc"] else ("raw", row["val_acc"])
        improved = acc > self.best_val_accuracy
        if improved:
            self.best_val_accuracy, self.best_epoch, self.time_to_best_s = acc, self.epoch, self.train_time_s
            self.best_weights = weights
        return improved


def save(accelerator, run_dir: Path, state: TrainerState, started: float) -> Path:
    """Save the epoch just finished into run_dir/checkpoint/epoch-N (all processes call this); returns the folder.

    The last history row gets `checkpoint_s`: seconds since `started` (the best model's save, then this one).
    """
    root = Path(run_dir) / runs.CHECKPOINT_DIR
    folder = root / f"{EPOCH_PREFIX}{state.epoch:04d}"
    if accelerator.is_main_process:
        shutil.rmtree(folder, ignore_errors=True)  # a partial folder left by a kill during this epoch's save
    accelerator.wait_for_everyone()
    try:
        accelerator.save_state(str(folder))
        accelerator.wait_for_everyone()  # every process's part is on disk before the folder is marked complete
        state.history[-1]["checkpoint_s"] = time.perf_counter() - started
        if accelerator.is_main_process:
            runs.write_json(folder / STATE_FILE, dataclasses.asdict(state))
    except Exception:
        # A failed write (disk full, read-only) leaves only the last good checkpoint. A kill or Ctrl-C may leave a
        # partial folder: `latest` skips it and the next save removes it.
        if accelerator.is_main_process:
            shutil.rmtree(folder, ignore_errors=True)
        raise
    if accelerator.is_main_process:
        for entry in root.iterdir():  # older epochs, partial folders, a checkpoint of the single-folder layout
            if entry != folder:
                shutil.rmtree(entry) if entry.is_dir() else entry.unlink()
    accelerator.wait_for_everyone()
    return folder


def latest(run_dir: str | Path) -> Path | None:
    """The newest complete checkpoint folder of a run, or None."""
    root = Path(run_dir) / runs.CHECKPOINT_DIR
    complete = [d for d in root.glob(f"{EPOCH_PREFIX}*") if (d / STATE_FILE).is_file()]
    if complete:
        return max(complete, key=lambda d: int(d.name[len(EPOCH_PREFIX):]))
    return root if (root / STATE_FILE).is_file() else None  # saved before checkpoints had epoch folders


def has_checkpoint(run_dir: str | Path) -> bool:
    """Whether --resume can continue this run folder."""
    return latest(run_dir) is not None


def saved_epoch(run_dir: str | Path) -> int:
    """The epoch of the newest complete checkpoint (0: none, or its state unreadable)."""
    folder = latest(run_dir)
    try:
        return int(runs.read_json(folder / STATE_FILE).get("epoch", 0)) if folder else 0
    except (UserError, ValueError, AttributeError):
        return 0


def load(accelerator, run_dir: Path) -> TrainerState | None:
    """Load the newest complete checkpoint into the objects `accelerator` prepared; its state, or None if none."""
    folder = latest(run_dir)
    if folder is None:
        return None
    accelerator.load_state(str(folder))
    return TrainerState(**runs.read_json(folder / STATE_FILE))
