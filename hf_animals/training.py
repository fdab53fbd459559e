"""The Accelerate training loop: one run folder per (model, regime, hyper-parameters).

Shaped like timm's train.py and Accelerate's plain-loop examples:

    train(cfg) ─▶ setup(cfg)         accelerator, model + applied regime, data, loaders, optimizer, scheduler
               ─▶ resume_state(...)  the newest complete checkpoint (`checkpoints`), or a fresh TrainerState
               ─▶ run_epochs(...)    train_one_epoch ─▶ validate ─▶ save_best_model (if better), checkpoints.save
               ─▶ finalise(...)      test metrics of the best model (evaluation), curves, run.json (last)

`Accelerator` owns devices, processes and mixed precision; this module owns the protocol (seeded order, validation
every epoch, best model by validation accuracy, resume, test evaluation). The same `train()` runs under `python`,
`accelerate launch` or `torchrun`.
"""
from __future__ import annotations

import dataclasses
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from . import augment as hfaugment
from . import catalogue, checkpoints, costs, evaluation, faults, image_cache, locking, lr_probe, plots, preprocess
from . import recipe, run_data, runs
from . import data as hfdata
from . import models as hfmodels
from . import precision as hfprecision  # issue 13
from . import tracking
from .device_data import DeviceBatches, dataset_tensors, fits_on_device, tensors_nbytes  # issue 13
from .errors import UserError
from .meters import EpochMeter, NonFiniteLoss, ProgressRefresher  # issue 13
from .train_config import OPTIMIZERS, DataSource, TrainConfig, make_scheduler

@dataclass
class TrainingSetup:
    """Everything one run needs from its first epoch to its test evaluation (built by `setup`)."""

    cfg: TrainConfig
    accelerator: Any
    out: Path
    manifest: Path
    class_names: list[str]
    preprocessing: preprocess.Preprocessing  # size, resize, mean/std: saved into the model's pretrained_cfg
    arrays: dict  # {split: (uint8 pixels, labels)}: the decoded-image cache, read again by the test evaluation
    model: torch.nn.Module  # the full, unwrapped model: what the best checkpoint saves
    regime: hfmodels.Unfrozen  # what models.apply_regime unfroze, as it returned it
    train_module: torch.nn.Module  # prepared module that is stepped: the model, or its trainable suffix
    val_module: torch.nn.Module
    train_loader: DataLoader | DeviceBatches  # issue 13: DeviceBatches when the tensors fit on the device
    val_loader: DataLoader | DeviceBatches
    optimizer: torch.optim.Optimizer
    scheduler: Any
    steps_per_epoch: int
    batch_augment: torch.nn.Module | None  # per-image augmentation of whole batches on the device
    memory: costs.PeakMemory  # this run's own peak, started right after the accelerator
    image_cache_s: float  # one-time cost of decoding (or reading back) the image cache
    feature_cache_s: float  # one-time cost of the frozen-prefix features (0 when not cached)
    cached_splits: tuple[str, ...]  # splits that train / validate on cached frozen-prefix features
    ema: Any = None  # timm ModelEmaV3 of the full model (--ema), part of the resume state
    ema_val_module: torch.nn.Module | None = None  # the EMA weights, consuming what val_module consumes
    mixup: recipe.MixupCutmix | None = None  # on normalised images, when the model sees images in training
    lr_probe: Any = None  # lr_probe.LrProbe of `--lr auto`


# ----------------------------------------------------------------------------------------------------------------
# The run
# ----------------------------------------------------------------------------------------------------------------
def train(cfg: TrainConfig, data_source: DataSource | None = None) -> dict:
    """Train, validate every epoch, keep the best model, evaluate it on the test split; return run.json.

    A run that fails before finishing an epoch leaves no folder behind if it created it (only its own split was
    there); an earlier run is never touched. One writer per run folder: a second one gets a UserError naming the
    process that holds it. Ctrl-C and an unwritable output say what was kept (see `faults`). `data_source` swaps in
    another train/val pipeline (the benchmark).
    """
    out = Path(cfg.output_dir)
    with faults.explain_failures(out, cfg.epochs), \
            locking.hold_folder(cfg.output_dir, keep=checkpoints.has_checkpoint, what="run"):
        return _train_locked(cfg, data_source)


def _train_locked(cfg: TrainConfig, data_source: DataSource | None) -> dict:
    """`train` while holding the run folder's lock: claim it, set up, run the epochs, finalise."""
    out = _claim_output_dir(cfg)
    if cfg.resume and runs.is_complete(out):
        return runs.read_json(out / runs.RUN_JSON)
    s = setup(cfg, out, data_source)
    state = resume_state(s)
    _announce(s)
    tracker = start_tracker(s, state)
    try:
        if not run_epochs(s, state, tracker):
            return {}
        return finalise(s, state, tracker)
    finally:
        tracker.finish()  # every exit, also stop_after_epochs (not end_training: see tracking)


def setup(cfg: TrainConfig, out: Path, data_source: DataSource | None = None) -> TrainingSetup:
    """Accelerator, run folder, split, model, data, loaders, optimizer and scheduler, prepared by Accelerate."""
    from accelerate.utils import set_seed

    # log_with + project_config for cfg.report_to; a tracker that is not installed fails here, before the run
    # folder exists
    accelerator = evaluation.make_accelerator(cfg.mixed_precision, **tracking.accelerator_kwargs(cfg.report_to, out))
    memory = costs.PeakMemory(accelerator.device)  # this run's own peak, not the process's so far
    if accelerator.device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed input sizes: let cuDNN pick the fastest kernels once
    if accelerator.is_main_process:
        if cfg.overwrite and not cfg.resume and out.exists():
            locking.clear_folder(out)  # keeps the lock this run holds
        out.mkdir(parents=True, exist_ok=True)
    accelerator.wait_for_everyone()
    manifest = run_data.manifest_for(cfg, out, accelerator)
    rows = hfdata.read_manifest(manifest, cfg.data_dir, verify=False)
    run_data.require_every_split(rows, manifest)
    class_names = hfdata.class_names(rows)

    set_seed(cfg.seed)
    model, regime = build_model(cfg, len(class_names))
    dcfg = hfmodels.data_config(model)
    preprocessing = preprocess.Preprocessing.from_model(model, cfg.image_size)
    image_size = preprocessing.image_size
    with accelerator.main_process_first():  # one process fills the decoded-image cache, the others read it
        arrays, image_cache_s = costs.timed(  # one-time: decode (or read back) the image cache
            image_cache.cached_split_arrays, cfg.data_dir, manifest, image_size, cache_dir=cfg.cache_dir,
            verify=False)  # manifest_for verified (or just wrote) it
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    injected = data_source(cfg, rows, class_names, image_size) if data_source else None
    split_data = run_data.split_data(cfg, model, regime, dcfg, arrays, accelerator, injected)
    # Cached pixels are augmented per image but batched, on the device, after the loader (no loader-side work).
    batch_augment = hfaugment.batch_augmentation(image_size) if cfg.augment and injected is None else None

    # --- issue 13: the cache's tensors live on the device; batches are indexed there (device_data.py) in the
    # DataLoader path's exact seeded, sharded order. On a CPU they already are in memory: same code, no loader.
    device_batches = injected is None and fits_on_device(
        tensors_nbytes(*dataset_tensors(split_data.train_set), *dataset_tensors(split_data.val_set)),
        accelerator.device)
    if device_batches:
        shard = dict(num_processes=accelerator.num_processes, process_index=accelerator.process_index)
        train_loader = DeviceBatches(*dataset_tensors(split_data.train_set), cfg.batch_size, accelerator.device,
                                     shuffle=True, seed=cfg.seed, **shard)  # seed: the seedable sampler's
        val_loader = DeviceBatches(*dataset_tensors(split_data.val_set), max(cfg.batch_size, 64), accelerator.device,
                                   shuffle=False, **shard)
    else:  # --- end issue 13 (the DataLoaders below are unchanged) ---
        pin = accelerator.device.type == "cuda"
        train_loader = DataLoader(split_data.train_set, batch_size=cfg.batch_size, shuffle=True, drop_last=False,
                                  num_workers=cfg.num_workers, pin_memory=pin, persistent_workers=cfg.num_workers > 0)
        val_loader = DataLoader(split_data.val_set, batch_size=max(cfg.batch_size, 64), shuffle=False,
                                num_workers=cfg.num_workers, pin_memory=pin)
    def make_optimizer(lr: float) -> torch.optim.Optimizer:
        groups = hfmodels.param_groups(model, lr, backbone_lr_scale=cfg.backbone_lr_scale,
                                       weight_decay=cfg.weight_decay)
        return OPTIMIZERS[cfg.optimizer](groups, dataclasses.replace(cfg, lr=lr))

    probe = lr_probe.probe_for_run(cfg, out, split_data, batch_augment, train_loader, make_optimizer, accelerator) \
        if cfg.lr_auto else None
    optimizer = make_optimizer(probe.chosen_lr if probe else cfg.lr)
    steps_per_epoch = len(train_loader) if device_batches else math.ceil(len(train_loader) / accelerator.num_processes)
    scheduler = make_scheduler(optimizer, cfg, steps_per_epoch)

    if device_batches:  # issue 13: no loaders for Accelerate to wrap
        prepared, optimizer = accelerator.prepare(split_data.train_module, optimizer)
    else:
        prepared, optimizer, train_loader, val_loader = accelerator.prepare(split_data.train_module, optimizer,
                                                                           train_loader, val_loader)
    val_module = prepared if split_data.val_module is split_data.train_module else \
        split_data.val_module.to(accelerator.device)
    accelerator.register_for_checkpointing(scheduler)
    ema, ema_val_module = recipe.make_run_ema(cfg, model, dcfg, split_data, steps_per_epoch, accelerator)
    mixup = recipe.MixupCutmix(len(class_names), cfg.mixup, cfg.cutmix, label_smoothing=cfg.label_smoothing) \
        if (cfg.mixup or cfg.cutmix) and "train" not in split_data.cached_splits else None
    return TrainingSetup(cfg, accelerator, out, manifest, class_names, preprocessing, arrays, model, regime,
                         torch.compile(prepared) if cfg.compile else prepared, val_module, train_loader, val_loader,
                         optimizer, scheduler, steps_per_epoch, batch_augment, memory, image_cache_s,
                         split_data.feature_cache_s, split_data.cached_splits, ema, ema_val_module, mixup, probe)


def build_model(cfg: TrainConfig, num_classes: int) -> tuple[torch.nn.Module, Any]:
    """The model with its regime applied: (model, what models.apply_regime unfroze)."""
    model = hfmodels.create_model(cfg.model, num_classes=num_classes, pretrained=cfg.pretrained,
                                  pretrained_file=cfg.pretrained_file,
                                  **({"drop_rate": cfg.drop_rate} if cfg.drop_rate is not None else {}))
    if cfg.offline_fallback:
        model.pretrained_source = catalogue.OFFLINE_SOURCE
    regime = hfmodels.apply_regime(model, cfg.unfreeze)
    check_head_trains(model, cfg.unfreeze)
    recipe.init_new_head(model, cfg.head_init_scale, cfg.head_init_bias)
    return model, regime


def check_head_trains(model: torch.nn.Module, unfreeze: str) -> None:
    """A new classifier starts random: freezing it would train a backbone under a fixed random head. Only a model
    this project trained before (catalogue kind 'saved') brings a trained head of its own."""
    source = catalogue.weight_source(model.pretrained_source, model.pretrained_cfg.get("architecture", ""))
    if source.kind != "saved" and not any(p.requires_grad for p in model.get_classifier().parameters()):
        raise UserError(f"--unfreeze {unfreeze} leaves the new, randomly initialised classifier frozen; "
                        f"add it: --unfreeze {unfreeze},head")


# ----------------------------------------------------------------------------------------------------------------
# Epochs
# ----------------------------------------------------------------------------------------------------------------
def run_epochs(s: TrainingSetup, state: checkpoints.TrainerState, tracker: tracking.RunTracker) -> bool:
    """Train from the epoch after `state` to the last (or an early stop); False when stopped on request
    (`stop_after_epochs`: the run is resumable, not finished)."""
    from accelerate.utils import set_seed

    cfg, accelerator = s.cfg, s.accelerator
    first_epoch = state.epoch + 1
    for epoch in range(first_epoch, cfg.epochs + 1):
        if cfg.stop_after_epochs and epoch - first_epoch >= cfg.stop_after_epochs:
            accelerator.print(f"stopping after {cfg.stop_after_epochs} epoch(s) as asked; --resume continues")
            return False
        stale = state.epoch - state.best_epoch
        if cfg.early_stopping and stale >= cfg.early_stopping:
            accelerator.print(f"early stopping: no val-accuracy gain for {stale} epochs")
            break
        # Per-epoch seeding makes augmentation/dropout randomness independent of where a run was resumed.
        set_seed(cfg.seed + epoch * 1000 + accelerator.process_index)
        s.train_loader.set_epoch(epoch)
        t0 = time.perf_counter()
        stats = train_one_epoch(s, epoch, tracker)
        val_loss, val_acc = validate(s.val_module, s.val_loader, accelerator)
        row = {"epoch": epoch, "train_loss": stats["train_loss"], "train_acc": stats["train_acc"],
               "val_loss": val_loss, "val_acc": val_acc, "lr": s.optimizer.param_groups[0]["lr"],
               "epoch_time_s": time.perf_counter() - t0, "images_per_s": stats["images_per_s"],
               "data_wait_fraction": stats["data_wait_fraction"]}
        if s.ema is not None:
            row["val_loss_ema"], row["val_acc_ema"] = validate(s.ema_val_module, s.val_loader, accelerator)
        improved = state.record(row)
        accelerator.print(
            f"epoch {epoch:3d}/{cfg.epochs}  train loss {row['train_loss']:.4f} acc {row['train_acc']:.4f}  "
            f"val loss {val_loss:.4f} acc {val_acc:.4f}"
            + (f" (EMA {row['val_acc_ema']:.4f})" if s.ema is not None else "") + f"{' *' if improved else ''}  "
            f"{row['images_per_s']:.0f} img/s  {row['epoch_time_s']:.1f}s")
        t_save = time.perf_counter()
        with faults.diagnosed_writes(s.out):  # a full disk is reported as such, whichever library hit it
            if improved and accelerator.is_main_process:
                save_best_model(s, state.best_weights)
            checkpoints.save(accelerator, s.out, state, started=t_save)
        tracker.log_epoch(epoch, state.history[-1])  # the epoch's step losses/lrs + its history row
        if accelerator.is_main_process:
            runs.write_history(s.out, state.history)
    return True


def train_one_epoch(s: TrainingSetup, epoch: int, tracker: tracking.RunTracker) -> dict:
    """One pass over the training split: loss and accuracy over all processes, training images per second, and
    the fraction of the time the steps sat waiting for data."""
    from tqdm.auto import tqdm

    accelerator = s.accelerator
    t0 = time.perf_counter()
    # The module actually stepped: on cached features that is the trainable suffix, whose head dropout is not a
    # module of the model, and which validate() left in eval mode. Frozen BatchNorm stays in eval mode.
    hfmodels.set_train_mode(s.train_module)
    bar = tqdm(total=s.steps_per_epoch, desc=f"epoch {epoch}/{s.cfg.epochs}", leave=False,
               disable=not (s.cfg.progress and accelerator.is_local_main_process and sys.stderr.isatty()))
    wait = 0.0
    # --- issue 13: sync-free hot loop (meters.py): statistics stay on the device, read at sync points ---
    meter = EpochMeter(accelerator.device)
    refresher = ProgressRefresher(bar, meter, num_processes=accelerator.num_processes)
    batches = iter(s.train_loader)
    for step in range(s.steps_per_epoch):
        t_wait = time.perf_counter()
        batch = next(batches, None)
        wait += time.perf_counter() - t_wait  # time the step sat idle waiting for data
        if batch is None:
            break
        x, y = batch
        loss, logits = _train_step(s, x, y, global_step=(epoch - 1) * s.steps_per_epoch + step + 1)
        tracker.record_step(loss, s.optimizer)  # tracking: kept on the device, sent once per epoch
        meter.update(loss, logits, y)
        try:
            refresher.step()  # a sync point every few steps / fraction of a second: also checks finiteness
        except NonFiniteLoss as bad:
            raise _non_finite(bad, epoch, s.out) from None
    bar.close()
    try:
        train_loss, train_acc, seen = meter.totals(accelerator)  # the epoch's one sync
    except NonFiniteLoss as bad:
        raise _non_finite(bad, epoch, s.out) from None
    # --- end issue 13 hot loop ---
    train_time = time.perf_counter() - t0
    return {"train_loss": train_loss, "train_acc": train_acc, "images_per_s": seen / train_time,
            "data_wait_fraction": wait / train_time}


def _non_finite(bad: NonFiniteLoss, epoch: int, out: Path) -> UserError:
    """issue 13: raised at a sync point, before this epoch saves anything, so the last good checkpoint stays."""
    return UserError(f"non-finite loss at epoch {epoch}, step {bad.step}: lower --lr or use --mixed-precision no;"
                     f" the last finished epoch's checkpoint (if any) is kept in {out}")


def _train_step(s: TrainingSetup, x: torch.Tensor, y: torch.Tensor, global_step: int):
    """One optimizer step on a batch: (detached loss, logits); no host sync (finiteness is the meter's)."""
    if s.batch_augment is not None:
        x = s.batch_augment(x)
    if s.cfg.channels_last and x.ndim == 4:
        x = x.contiguous(memory_format=torch.channels_last)
    with s.accelerator.autocast():
        if s.mixup is not None:  # mixing needs float pixels: normalise first (the same affine map either way)
            mixed, soft = s.mixup(preprocess.normalize_batch(x, s.preprocessing.mean, s.preprocessing.std), y)
            logits = s.train_module(mixed)
            loss = recipe.soft_target_loss(logits, soft)
        else:
            logits = s.train_module(x)
            loss = F.cross_entropy(logits.float(), y, label_smoothing=s.cfg.label_smoothing)
    s.optimizer.zero_grad(set_to_none=True)
    s.accelerator.backward(loss)
    s.optimizer.step()
    s.scheduler.step()
    if s.ema is not None:  # the decay depends on the global step only, so a resumed run averages identically
        s.ema.update(s.model, step=global_step)
    return loss.detach(), logits


@torch.no_grad()
def validate(module, loader, accelerator) -> tuple[float, float]:
    """Loss and accuracy over the whole split; gather_for_metrics (or, for device-resident batches, their own
    gather at the end) drops the padding of uneven shards."""
    module.eval()
    on_device = isinstance(loader, DeviceBatches)  # issue 13
    losses, hits = [], []
    for x, y in loader:
        with accelerator.autocast():
            logits = module(x)
        loss = F.cross_entropy(logits.float(), y, reduction="none")
        pred = logits.argmax(1)
        if not on_device:
            loss, pred, y = accelerator.gather_for_metrics((loss, pred, y))
        losses.append(loss)
        hits.append(pred == y)
    losses = torch.cat(losses) if losses else torch.zeros(0, device=accelerator.device)
    hits = torch.cat(hits) if hits else torch.zeros(0, dtype=torch.bool, device=accelerator.device)
    if on_device:
        losses, hits = loader.gather(losses, accelerator), loader.gather(hits.float(), accelerator)
    return losses.mean().item(), hits.float().mean().item()


# ----------------------------------------------------------------------------------------------------------------
# Best model and resume state
# ----------------------------------------------------------------------------------------------------------------
def save_best_model(s: TrainingSetup, weights: str = "raw") -> None:
    """The full model (also when only its suffix was stepped), in timm's Hub layout: the run's deliverable.
    weights 'ema': the EMA copy's weights (--ema, when they validated better)."""
    meta = {"hf_animals": {"model": s.cfg.model, "unfreeze": s.cfg.unfreeze,
                           "pretrained_source": s.model.pretrained_source}}
    rows = hfdata.read_manifest(s.manifest, s.cfg.data_dir, verify=False)
    model = s.ema.module if weights == "ema" else s.model
    hfmodels.save_model(model, s.out, s.class_names, s.preprocessing, meta,
                        label_folders=label_folders(rows, s.class_names))


def label_folders(rows: list[dict], class_names: list[str]) -> list[str]:
    """The class folder names on disk ('cane' for 'dog' in Animals-10), in label order: predict's default labels."""
    folders = {r["label"]: Path(r["path"]).parts[0] for r in rows}
    return [folders[name] for name in class_names]


def resume_state(s: TrainingSetup) -> checkpoints.TrainerState:
    """With --resume, the newest complete checkpoint loaded into the prepared objects; else a fresh state."""
    state = checkpoints.load(s.accelerator, s.out) if s.cfg.resume else None
    if state is None:
        return checkpoints.TrainerState(cache_s=s.feature_cache_s, image_cache_s=s.image_cache_s)
    s.accelerator.print(f"resuming {s.out} after epoch {state.epoch}")
    return state


def start_tracker(s: TrainingSetup, state: checkpoints.TrainerState) -> tracking.RunTracker:
    """tracking: the run's trackers started with its hyper-parameters (a resumed run continues its own)."""
    total, trainable = hfmodels.count_params(s.model)
    config = {**dataclasses.asdict(s.cfg), "image_size": s.preprocessing.image_size,
              "pretrained_source": s.model.pretrained_source,
              "backbone_lr_scale_effective": hfmodels.effective_backbone_lr_scale(s.model, s.cfg.backbone_lr_scale),
              "params_total": total, "params_trainable": trainable, "num_processes": s.accelerator.num_processes,
              "mixed_precision": s.accelerator.mixed_precision}
    return tracking.RunTracker.start(s.accelerator, project=s.cfg.tracker_project, run_name=s.out.name,
                                     steps_per_epoch=s.steps_per_epoch, resume=state.epoch > 0, config=config)


# ----------------------------------------------------------------------------------------------------------------
# The end of a run
# ----------------------------------------------------------------------------------------------------------------
def finalise(s: TrainingSetup, state: checkpoints.TrainerState, tracker: tracking.RunTracker) -> dict:
    """Test metrics of the best model, the curves, then run.json: written last, it marks the run complete."""
    if s.accelerator.is_main_process:
        plots.plot_curves(state.history, s.out / "curves.png", title=f"{s.cfg.model} [{s.cfg.unfreeze}]")
    metrics = evaluation.evaluate_run(s.out, "test", accelerator=s.accelerator, arrays=s.arrays, tta=True)
    summary = None
    if s.accelerator.is_main_process:
        summary = run_summary(s, state, metrics)
        runs.write_json(s.out / runs.RUN_JSON, summary)
        tracker.log_final(state.epoch, metrics, summary, s.out)  # tracking: test metrics, summary, figures
    s.accelerator.wait_for_everyone()
    return summary or {}


def run_summary(s: TrainingSetup, state: checkpoints.TrainerState, metrics: dict) -> dict:
    """run.json: what was trained from where, how it went, what it cost, and how to reproduce it."""
    cfg, accelerator = s.cfg, s.accelerator
    total_params, trainable_params = hfmodels.count_params(s.model)
    return {
        "status": "complete",
        "model": cfg.model,
        "unfreeze": cfg.unfreeze,
        "pretrained_source": s.model.pretrained_source,
        **regime_record(s.regime),
        "train_time_s": state.train_time_s,
        "time_to_best_s": state.time_to_best_s,
        **costs.cost_totals(state.image_cache_s, state.cache_s, state.train_time_s),  # cache_s, total_s
        "epochs_run": state.epoch,
        "images_per_s": _mean([r["images_per_s"] for r in state.history]),
        **s.memory.stop(),  # peak_memory_mb, peak_rss_mb, rss_at_start_mb, peak_memory_method
        "params_total": total_params,
        "params_trainable": trainable_params,
        # effective: 1 for networks that start from random weights (catalogue.effective_backbone_lr_scale)
        "backbone_lr_scale": hfmodels.effective_backbone_lr_scale(s.model, cfg.backbone_lr_scale),
        "best_epoch": state.best_epoch,
        "best_val_accuracy": state.best_val_accuracy,
        "test_accuracy": metrics["accuracy"],
        "test_accuracy_tta": metrics["tta"]["accuracy"],  # image + mirror image (recipe.tta_probabilities)
        "best_weights": state.best_weights,  # 'raw', or 'ema' when the weight average validated better
        "recipe": recipe_record(s),
        "checkpoint_bytes": (s.out / "model.safetensors").stat().st_size,
        "latency_ms_per_image": metrics.get("latency_ms_per_image"),
        "latency": metrics.get("latency"),  # batch 1 and 32: median, spread, threads
        "image_size": s.preprocessing.image_size,
        "class_names": s.class_names,
        "device": str(accelerator.device),
        "num_processes": accelerator.num_processes,
        "mixed_precision": accelerator.mixed_precision,
        "seed": cfg.seed,
        "splits_sha256": hfdata.manifest_hash(s.manifest),
        "splits": str(s.manifest),
        "args": dataclasses.asdict(cfg),
        "versions": runs.library_versions(),
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def recipe_record(s: TrainingSetup) -> dict:
    """run.json's account of the recipe ingredients as applied (an option asked for may not apply: Mixup on
    cached features, head init on a trained head)."""
    return {"head_init": recipe.head_is_new(s.model) and s.cfg.head_init_scale is not None,
            "ema_decay": s.ema.decay if s.ema is not None else None,
            "mixup_applied": s.mixup is not None,
            "lr": s.lr_probe.chosen_lr if s.lr_probe else s.cfg.lr,
            "lr_probe": lr_probe.probe_summary(s.lr_probe) if s.lr_probe else None}


def regime_record(regime: hfmodels.Unfrozen) -> dict:
    """run.json's account of what trained, from the regime `models.apply_regime` applied (never re-derived from
    requires_grad)."""
    return {"head_only": regime.head_only, "trainable_modules": list(regime.trainable_modules),
            "frozen_modules": list(regime.frozen_modules)}


# ----------------------------------------------------------------------------------------------------------------
# Run folder and data helpers
# ----------------------------------------------------------------------------------------------------------------
def _claim_output_dir(cfg: TrainConfig) -> Path:
    """Refuse to clobber an earlier run: a non-empty folder needs --resume or --overwrite."""
    out = Path(cfg.output_dir)
    if not cfg.output_dir:
        raise UserError("--output-dir is required")
    if out.exists() and not out.is_dir():
        raise UserError(f"--output-dir {out} exists and is not a folder")
    if locking.folder_entries(out) and not cfg.resume:  # its lock file is not content
        if not cfg.overwrite:
            raise UserError(f"{out} is not empty: pass --resume to continue that run or --overwrite to replace it")
        if not any((out / name).exists() for name in (*runs.RUN_FILES, runs.CHECKPOINT_DIR, runs.SPLITS_FILE)):
            raise UserError(f"{out} does not look like a run folder; refusing to --overwrite it")
    return out


def _announce(s: TrainingSetup) -> None:
    total, trainable = hfmodels.count_params(s.model)
    s.accelerator.print(
        f"{s.cfg.model} [{s.cfg.unfreeze}] {s.model.pretrained_source}: {trainable:,} of {total:,} parameters "
        f"trainable; {s.accelerator.num_processes} process(es) on {s.accelerator.device}, mixed precision "
        f"{hfprecision.describe(s.cfg.mixed_precision, s.accelerator.mixed_precision)}"
        + (f"; frozen-prefix features cached ({'+'.join(s.cached_splits)})" if s.cached_splits else ""))


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else 0.0
