"""One run's configuration: every knob of `training.train`, validated up front, plus the optimizers and schedules
those knobs name.

Kept apart from the loop so scripts, the study and the benchmark can build and check a run's settings without
importing the loop, and so run.json's `args` (the dataclass, verbatim) has one definition.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
from torch.utils.data import Dataset

from . import catalogue, tracking
from . import precision as hfprecision
from .errors import UserError


@dataclass
class TrainConfig:
    """Every knob of one run; saved verbatim into run.json so a run can be reproduced from its folder."""

    model: str = "resnet18"
    unfreeze: str = "all"
    data_dir: str = ""
    output_dir: str = ""
    splits: str | None = None  # manifest from prepare_data.py; None: split here and save it in the run folder
    train_per_class: int = 300
    val_per_class: int = 75
    test_per_class: int = 75
    proportional: bool = False
    skip_bad: bool = False
    epochs: int = 30
    batch_size: int = 32
    # None: the model family's optimizer (catalogue.Family.optimizer) and that optimizer's lr and weight decay
    # (catalogue.OPTIMIZER_DEFAULTS), resolved when the config is made, so run.json holds the values used.
    lr: float | None = None
    backbone_lr_scale: float = 0.1  # unfrozen pretrained blocks learn at lr * scale; the head at lr
    optimizer: str | None = None
    momentum: float = 0.9
    weight_decay: float | None = None
    label_smoothing: float = 0.0
    # A NEW classifier's weights x head_init_scale (0: zeros, so training starts at the uniform prediction) and its
    # bias := head_init_bias; None keeps the architecture's init. A trained head of a saved model is never touched.
    head_init_scale: float | None = 0.0
    head_init_bias: float | None = 0.0
    ema: bool = False  # also validate an EMA of the weights every epoch; the better of raw/EMA by val acc is saved
    ema_decay: float | None = None  # None: horizon of a tenth of the run (recipe.ema_decay_for)
    mixup: float = 0.0  # Mixup alpha (0 = off); only where the model sees images (not cached frozen features)
    cutmix: float = 0.0  # CutMix alpha (0 = off)
    lr_auto: bool = False  # `--lr auto`: the head lr from a range test on the training split (lr_probe)
    lr_probe_steps: int = 200
    sched: str = "cosine"
    warmup_epochs: int = 0
    early_stopping: int = 0  # patience in epochs without val-accuracy gain; 0 = off
    image_size: int | None = None  # None: the model's pretrained config (data and model agree)
    augment: bool = True
    mixed_precision: str | None = "auto"  # auto: bf16/fp16 where the hardware has it (precision.py); None = auto
    seed: int = 42
    pretrained: bool = True
    pretrained_file: str | None = None
    # The study's `--weights auto` wanted pretrained weights but could not get them (offline): the run starts from
    # random weights (pretrained=False) and records catalogue.OFFLINE_SOURCE, so no card calls it pretrained.
    offline_fallback: bool = False
    drop_rate: float | None = None
    feature_cache: bool = True  # train only the trainable suffix on cached frozen-prefix features when exact
    channels_last: bool = True
    compile: bool = False
    num_workers: int = 0  # DataLoader processes: the cached images are in memory, so 0 is fastest
    cache_dir: str | None = None
    resume: bool = False
    overwrite: bool = False
    stop_after_epochs: int = 0  # end this invocation after N epochs, resumable (preemptible machines, tests)
    progress: bool = True
    report_to: str | None = None  # tracking: none | tensorboard | trackio | wandb | mlflow | all | a comma list
    tracker_project: str | None = None  # tracking: the trackers' project (None: hf_animals); the run is its folder

    def __post_init__(self) -> None:
        self._resolve_optimizer_defaults()
        checks = {
            "train_per_class": self.train_per_class >= 1,  # every run learns, picks its best epoch and tests
            "val_per_class": self.val_per_class >= 1,
            "test_per_class": self.test_per_class >= 1,
            "epochs": self.epochs >= 1,
            "batch_size": self.batch_size >= 1,
            "lr": math.isfinite(self.lr) and self.lr > 0,
            "backbone_lr_scale": math.isfinite(self.backbone_lr_scale) and self.backbone_lr_scale >= 0,
            "momentum": 0 <= self.momentum < 1,
            "weight_decay": self.weight_decay >= 0,
            "label_smoothing": 0 <= self.label_smoothing < 1,
            "ema_decay": self.ema_decay is None or 0 < self.ema_decay < 1,
            "mixup": self.mixup >= 0,
            "cutmix": self.cutmix >= 0,
            "lr_probe_steps": self.lr_probe_steps >= 2,
            "warmup_epochs": 0 <= self.warmup_epochs < self.epochs,
            "early_stopping": self.early_stopping >= 0,
            "image_size": self.image_size is None or self.image_size >= 32,
            "num_workers": self.num_workers >= 0,
        }
        bad = [f"--{k.replace('_', '-')}={getattr(self, k)}" for k, ok in checks.items() if not ok]
        if bad:
            raise UserError(f"invalid value(s): {', '.join(bad)} (see --help for the allowed ranges)")
        if self.sched not in ("cosine", "step", "none"):
            raise UserError(f"unknown schedule {self.sched!r}; choose from cosine, step, none")
        if self.mixed_precision not in (None, *hfprecision.CHOICES):
            raise UserError(f"unknown mixed precision {self.mixed_precision!r}; "
                            f"choose from {', '.join(hfprecision.CHOICES)}")
        if self.offline_fallback and self.pretrained:
            raise UserError("offline_fallback records a run that could not get pretrained weights: "
                            "it needs pretrained=False")
        tracking.parse_report_to(self.report_to)  # tracking: spelling only; installation is checked when training

    def _resolve_optimizer_defaults(self) -> None:
        if self.optimizer is None:
            self.optimizer = catalogue.default_optimizer(self.model)
        if self.optimizer not in OPTIMIZERS:
            raise UserError(f"unknown optimizer {self.optimizer!r}; choose from {', '.join(OPTIMIZERS)}")
        defaults = catalogue.OPTIMIZER_DEFAULTS[self.optimizer]
        if self.lr is None:
            self.lr = defaults.lr
        if self.weight_decay is None:
            self.weight_decay = defaults.weight_decay


OPTIMIZERS = {
    "sgd": lambda groups, cfg: torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.momentum > 0),
    "adamw": lambda groups, cfg: torch.optim.AdamW(groups, lr=cfg.lr),
}

#: Another data pipeline for train and val (the benchmark's naive baseline): called with the run's config, manifest
#: rows, class names and image size, it returns (train set, val set) of (uint8 CHW image, label) pairs in manifest
#: order, already augmented if it wants augmentation. It replaces the decoded-image and feature caches.
DataSource = Callable[["TrainConfig", list, list, int], tuple[Dataset, Dataset]]


def make_scheduler(optimizer, cfg: TrainConfig, steps_per_epoch: int):
    """Per-step schedule: optional linear warm-up, then cosine to zero or a x0.1 step every third of training."""
    from torch.optim import lr_scheduler as S

    total = cfg.epochs * steps_per_epoch
    warmup = cfg.warmup_epochs * steps_per_epoch
    if cfg.sched == "cosine":
        main = S.CosineAnnealingLR(optimizer, T_max=max(1, total - warmup))
    elif cfg.sched == "step":
        main = S.StepLR(optimizer, step_size=max(1, (total - warmup) // 3), gamma=0.1)
    else:
        main = S.ConstantLR(optimizer, factor=1.0, total_iters=0)
    if not warmup:
        return main
    return S.SequentialLR(optimizer, [S.LinearLR(optimizer, 0.01, 1.0, total_iters=warmup), main], [warmup])
