"""The data of one training run: its manifest, and the datasets its train and val loaders read.

The manifest is the one given (verified) or a split made in the run folder; a manifest that lacks a split is
refused before any work. The datasets come from the decoded-image cache, or, for the frozen-prefix feature cache,
from the frozen part of the model run once over every image (`split_data`).
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

import torch
from torch.utils.data import Dataset, TensorDataset

from . import data as hfdata
from . import image_cache, runs
from . import models as hfmodels
from .errors import UserError
from .evaluation import Normalized

if TYPE_CHECKING:
    from .training import TrainConfig


def manifest_for(cfg: TrainConfig, out: Path, accelerator) -> Path:
    """The run's manifest: the given one (verified) or a fresh split saved in the run folder."""
    if cfg.splits:
        path = Path(cfg.splits)
        if not path.is_file():
            raise UserError(f"--splits {path} does not exist (make one with scripts/prepare_data.py)")
        hfdata.read_manifest(path, cfg.data_dir, verify=True)
        return path
    path = out / runs.SPLITS_FILE
    if accelerator.is_main_process and not path.exists():
        hfdata.prepare_splits(
            cfg.data_dir, out, train=cfg.train_per_class, val=cfg.val_per_class, test=cfg.test_per_class,
            seed=cfg.seed, proportional=cfg.proportional, skip_bad=cfg.skip_bad,
        )
    accelerator.wait_for_everyone()
    return path


def require_every_split(rows: list[dict], manifest: Path) -> None:
    """A run learns on train, picks its best epoch on val and reports on test: a manifest lacking one is refused."""
    empty = [split for split in hfdata.SPLITS if not any(r["split"] == split for r in rows)]
    if empty:
        raise UserError(f"manifest {manifest} has no {' and no '.join(empty)} images: every run needs train, val "
                        "and test images (make a split with --train, --val and --test of at least 1)")


class SplitData(NamedTuple):
    train_set: Dataset
    val_set: Dataset
    train_module: torch.nn.Module  # the module stepped on train_set (full model, or its suffix on cached features)
    val_module: torch.nn.Module
    feature_cache_s: float
    cached_splits: tuple[str, ...]


def split_data(cfg: TrainConfig, model, regime, dcfg: dict, arrays: dict, accelerator, injected) -> SplitData:
    """Train/val datasets and the modules that consume them.

    Frozen-prefix feature cache: when the frozen part is a prefix of the forward pass it is a fixed function of
    each image, so run it once per split instead of every epoch: always for validation (never augmented), and for
    training too when training is not augmented. The trainable rest shares the model's own parameters.
    """
    net = Normalized(model, dcfg["mean"], dcfg["std"])
    if injected is not None:
        return SplitData(*injected, net, net, 0.0, ())
    split = hfmodels.frozen_prefix_split(model, regime) if cfg.feature_cache else None
    if split is None:
        return SplitData(image_cache.ImageTensorDataset(*arrays["train"]),
                         image_cache.ImageTensorDataset(*arrays["val"]), net, net, 0.0, ())
    t0 = time.perf_counter()
    cached = ("train", "val") if not cfg.augment else ("val",)
    prefix = Normalized(split[0], dcfg["mean"], dcfg["std"])
    sets = {name: TensorDataset(prefix_features(prefix, arrays[name][0], accelerator, cfg), arrays[name][1])
            if name in cached else image_cache.ImageTensorDataset(*arrays[name]) for name in ("train", "val")}
    return SplitData(sets["train"], sets["val"], split[1] if "train" in cached else net, split[1],
                     time.perf_counter() - t0, cached)


@torch.no_grad()
def prefix_features(prefix: torch.nn.Module, pixels: torch.Tensor, accelerator, cfg: TrainConfig) -> torch.Tensor:
    """Frozen prefix output for every image of a split, computed once (eval mode: BN uses running stats)."""
    prefix = prefix.to(accelerator.device).eval()
    outs = []
    for i in range(0, len(pixels), 128):
        x = pixels[i:i + 128].to(accelerator.device)
        if cfg.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with accelerator.autocast():
            outs.append(prefix(x).float().cpu())
    return torch.cat(outs)
