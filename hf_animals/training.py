"""The Accelerate training loop: one run folder per (model, regime, hyper-parameters).

Modelled on Accelerate's plain-loop examples: `Accelerator` owns devices, processes and mixed precision; this module
owns the protocol (seeded order, validation every epoch, best checkpoint by validation accuracy, resume, test
evaluation, plots). The same `train()` runs under `python`, `accelerate launch` or `torchrun`.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import platform
import resource
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

from . import data as hfdata
from . import metrics as hfmetrics
from . import models as hfmodels
from . import plots
from . import tracking
from .errors import UserError

RUN_FILES = ("config.json", "model.safetensors", "history.csv", "history.json", "metrics.json", "run.json")
CHECKPOINT_DIR = "checkpoint"  # last-epoch state for --resume (model, optimizer, scheduler, scaler, RNG)
STATE_FILE = "trainer_state.json"


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
    lr: float = 0.01
    backbone_lr_scale: float = 0.1  # unfrozen pretrained blocks learn at lr * scale; the head at lr
    optimizer: str = "sgd"
    momentum: float = 0.9
    weight_decay: float = 1e-4
    label_smoothing: float = 0.0
    sched: str = "cosine"
    warmup_epochs: int = 0
    early_stopping: int = 0  # patience in epochs without val-accuracy gain; 0 = off
    image_size: int | None = None  # None: the model's pretrained config (data and model agree)
    augment: bool = True
    mixed_precision: str | None = None  # None: from accelerate config / `accelerate launch`
    seed: int = 42
    pretrained: bool = True
    pretrained_file: str | None = None
    drop_rate: float | None = None
    feature_cache: bool = True  # train only the trainable suffix on cached frozen-prefix features when exact
    channels_last: bool = True
    compile: bool = False
    num_workers: int | None = None  # None: 0 for in-memory cached tensors, several for the naive decode path
    cache_dir: str | None = None
    resume: bool = False
    overwrite: bool = False
    max_train_batches: int = 0  # benchmark aid: stop each epoch after N batches (0 = all)
    stop_after_epochs: int = 0  # end this invocation after N epochs, resumable (preemptible machines, tests)
    pipeline: str = "cached"  # "naive": decode every image every epoch (torchvision ImageFolder) - the baseline
    progress: bool = True
    report_to: str | None = None  # tracking: none | tensorboard | trackio | wandb | mlflow | all | a comma list
    tracker_project: str | None = None  # tracking: the trackers' project (None: hf_animals); the run is its folder

    def __post_init__(self) -> None:
        checks = {
            "epochs": self.epochs >= 1,
            "batch_size": self.batch_size >= 1,
            "lr": math.isfinite(self.lr) and self.lr > 0,
            "backbone_lr_scale": math.isfinite(self.backbone_lr_scale) and self.backbone_lr_scale >= 0,
            "momentum": 0 <= self.momentum < 1,
            "weight_decay": self.weight_decay >= 0,
            "label_smoothing": 0 <= self.label_smoothing < 1,
            "warmup_epochs": 0 <= self.warmup_epochs < self.epochs,
            "early_stopping": self.early_stopping >= 0,
            "image_size": self.image_size is None or self.image_size >= 32,
            "num_workers": self.num_workers is None or self.num_workers >= 0,
        }
        bad = [f"--{k.replace('_', '-')}={getattr(self, k)}" for k, ok in checks.items() if not ok]
        if bad:
            raise UserError(f"invalid value(s): {', '.join(bad)} (see --help for the allowed ranges)")
        if self.optimizer not in OPTIMIZERS:
            raise UserError(f"unknown optimizer {self.optimizer!r}; choose from {', '.join(OPTIMIZERS)}")
        if self.sched not in ("cosine", "step", "none"):
            raise UserError(f"unknown schedule {self.sched!r}; choose from cosine, step, none")
        if self.pipeline not in ("cached", "naive"):
            raise UserError(f"unknown pipeline {self.pipeline!r}; choose from cached, naive")
        if self.mixed_precision not in (None, "no", "fp16", "bf16"):
            raise UserError(f"unknown mixed precision {self.mixed_precision!r}; choose from no, fp16, bf16")
        tracking.parse_report_to(self.report_to)  # tracking: spelling only; installation is checked when training


OPTIMIZERS = {
    "sgd": lambda groups, cfg: torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.momentum > 0),
    "adamw": lambda groups, cfg: torch.optim.AdamW(groups, lr=cfg.lr),
}


# ----------------------------------------------------------------------------------------------------------------
# Run folder helpers
# ----------------------------------------------------------------------------------------------------------------
def is_run_complete(run_dir: str | Path) -> bool:
    """A run is complete once run.json says so (written last, after the test evaluation)."""
    path = Path(run_dir) / "run.json"
    if not path.exists():
        return False
    try:
        return json.loads(path.read_text()).get("status") == "complete"
    except json.JSONDecodeError:
        return False


def has_checkpoint(run_dir: str | Path) -> bool:
    return (Path(run_dir) / CHECKPOINT_DIR / STATE_FILE).exists()


def _claim_output_dir(cfg: TrainConfig) -> Path:
    """Refuse to clobber an earlier run: a non-empty folder needs --resume or --overwrite."""
    out = Path(cfg.output_dir)
    if not cfg.output_dir:
        raise UserError("--output-dir is required")
    if out.exists() and not out.is_dir():
        raise UserError(f"--output-dir {out} exists and is not a folder")
    if out.exists() and any(out.iterdir()) and not cfg.resume:
        if not cfg.overwrite:
            raise UserError(f"{out} is not empty: pass --resume to continue that run or --overwrite to replace it")
        if not any((out / name).exists() for name in (*RUN_FILES, CHECKPOINT_DIR, "splits.csv")):
            raise UserError(f"{out} does not look like a run folder; refusing to --overwrite it")
    return out


def _write_json(path: Path, obj: Any) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, default=_json_default))
    os.replace(tmp, path)  # atomic: an interrupted write never leaves half a file


def _json_default(obj: Any) -> Any:
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "item"):
        return obj.item()
    raise TypeError(type(obj))


def write_history(run_dir: Path, history: list[dict]) -> None:
    _write_json(run_dir / "history.json", history)
    if history:
        cols = list(history[0])
        lines = [",".join(cols)] + [",".join(_fmt(row[c]) for c in cols) for row in history]
        (run_dir / "history.csv").write_text("\n".join(lines) + "\n")


def _fmt(value: Any) -> str:
    return f"{value:.6g}" if isinstance(value, float) else str(value)


def library_versions() -> dict[str, str]:
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


def peak_memory_mb(device: torch.device) -> float:
    """GPU: max_memory_allocated; otherwise the process's peak resident set size."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


# ----------------------------------------------------------------------------------------------------------------
# Data for one run
# ----------------------------------------------------------------------------------------------------------------
def _manifest_for(cfg: TrainConfig, out: Path, accelerator) -> Path:
    """The run's manifest: the given one (verified) or a fresh split saved in the run folder."""
    if cfg.splits:
        path = Path(cfg.splits)
        if not path.is_file():
            raise UserError(f"--splits {path} does not exist (make one with scripts/prepare_data.py)")
        hfdata.read_manifest(path, cfg.data_dir, verify=True)
        return path
    path = out / "splits.csv"
    if accelerator.is_main_process and not path.exists():
        hfdata.prepare_splits(
            cfg.data_dir, out, train=cfg.train_per_class, val=cfg.val_per_class, test=cfg.test_per_class,
            seed=cfg.seed, proportional=cfg.proportional, skip_bad=cfg.skip_bad,
        )
    accelerator.wait_for_everyone()
    return path


class Normalized(torch.nn.Module):
    """uint8 images in, logits out: normalisation runs on the model's device (GPU when there is one)."""

    def __init__(self, model: torch.nn.Module, mean, std):
        super().__init__()
        self.model, self.mean, self.std = model, tuple(mean), tuple(std)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(hfdata.normalize_batch(x, self.mean, self.std) if x.dtype == torch.uint8 else x)


def naive_split(cfg: TrainConfig, rows: list[dict], split: str, class_names: list[str], image_size: int, augment):
    """The baseline data path: torchvision ImageFolder that opens, decodes and resizes every file every epoch.

    Kept only so scripts/benchmark.py can time it against the decoded-image cache on the very same images: samples
    follow the manifest order, so both pipelines see the same index -> image mapping and the same shuffles.
    """
    from torchvision.datasets import ImageFolder

    index = {name: i for i, name in enumerate(class_names)}
    picked = [r for r in rows if r["split"] == split]
    wanted = {str(Path(cfg.data_dir, r["path"])) for r in picked}

    def load(path: str) -> torch.Tensor:
        pixels = torch.from_numpy(hfdata.load_rgb_resized(path, image_size)).permute(2, 0, 1).contiguous()
        return augment(pixels) if augment is not None else pixels

    folder = ImageFolder(cfg.data_dir, loader=load, is_valid_file=lambda p: p in wanted,
                         allow_empty=True)
    folder.samples = [(str(Path(cfg.data_dir, r["path"])), index[r["label"]]) for r in picked]
    return folder


# ----------------------------------------------------------------------------------------------------------------
# The loop
# ----------------------------------------------------------------------------------------------------------------
def make_accelerator(cfg: TrainConfig, run_dir: Path | None = None):
    """The run's Accelerator; with `run_dir` (training, not evaluation) it also carries cfg.report_to's trackers."""
    from accelerate import Accelerator
    from accelerate.utils import DataLoaderConfiguration

    kwargs = {"mixed_precision": cfg.mixed_precision} if cfg.mixed_precision else {}
    if run_dir is not None:
        kwargs.update(tracking.accelerator_kwargs(cfg.report_to, run_dir))  # tracking: log_with + project_config
    try:
        # A seedable sampler gives every process the same seeded, epoch-dependent order, so resume and multi-process
        # runs shuffle exactly like an uninterrupted single run.
        return Accelerator(dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True), **kwargs)
    except ValueError as err:  # e.g. fp16 asked for on a machine that cannot do it
        raise UserError(f"mixed precision {cfg.mixed_precision!r}: {err}") from None


def train(cfg: TrainConfig) -> dict:
    """Train, validate every epoch, keep the best checkpoint, evaluate it on the test split; return run.json.

    A run that fails before finishing an epoch leaves no folder behind if it created it (only its own split was
    there); an earlier run is never touched.
    """
    fresh = not Path(cfg.output_dir).exists()
    try:
        return _train(cfg)
    except BaseException:
        out = Path(cfg.output_dir)
        if fresh and out.is_dir() and not has_checkpoint(out):
            shutil.rmtree(out, ignore_errors=True)  # ignore: another process may be removing it too
        raise


def _train(cfg: TrainConfig) -> dict:
    from accelerate.utils import set_seed
    from tqdm.auto import tqdm

    out = _claim_output_dir(cfg)
    if cfg.resume and is_run_complete(out):
        return json.loads((out / "run.json").read_text())
    accelerator = make_accelerator(cfg, run_dir=out)  # tracking: run_dir enables cfg.report_to
    if accelerator.device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed input sizes: let cuDNN pick the fastest kernels once
    if accelerator.is_main_process:
        if cfg.overwrite and not cfg.resume and out.exists():
            shutil.rmtree(out)
        out.mkdir(parents=True, exist_ok=True)
    accelerator.wait_for_everyone()
    manifest = _manifest_for(cfg, out, accelerator)
    rows = hfdata.read_manifest(manifest, cfg.data_dir, verify=False)
    class_names = hfdata.class_names(rows)

    set_seed(cfg.seed)
    model = hfmodels.create_model(cfg.model, num_classes=len(class_names), pretrained=cfg.pretrained,
                                  pretrained_file=cfg.pretrained_file,
                                  **({"drop_rate": cfg.drop_rate} if cfg.drop_rate is not None else {}))
    regime = hfmodels.apply_regime(model, cfg.unfreeze)
    check_head_trains(model, cfg.unfreeze)
    dcfg = hfmodels.data_config(model)
    image_size = cfg.image_size or int(dcfg["input_size"][-1])
    with accelerator.main_process_first():  # one process fills the decoded-image cache, the others read it
        arrays = hfdata.cached_split_arrays(cfg.data_dir, manifest, image_size, cache_dir=cfg.cache_dir,
                                            verify=False)  # _manifest_for verified (or just wrote) it
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)

    # Frozen-prefix feature cache: when the frozen part is a prefix of the forward pass it is a fixed function of
    # each image, so run it once per split instead of every epoch: always for validation (never augmented), and for
    # training too when training is not augmented. The trainable rest shares the model's own parameters.
    split = hfmodels.frozen_prefix_split(model, regime) if cfg.feature_cache and cfg.pipeline == "cached" else None
    net = Normalized(model, dcfg["mean"], dcfg["std"])
    train_module = val_module = net
    cached_splits = ("train", "val") if not cfg.augment else ("val",)
    t0 = time.perf_counter()
    if cfg.pipeline == "naive":
        augment = hfdata.train_augmentation(image_size) if cfg.augment else None
        train_set = naive_split(cfg, rows, "train", class_names, image_size, augment)
        val_set = naive_split(cfg, rows, "val", class_names, image_size, None)
    else:
        prefix = Normalized(split[0], dcfg["mean"], dcfg["std"]) if split else None
        sets = {name: TensorDataset(prefix_features(prefix, arrays[name][0], accelerator, cfg), arrays[name][1])
                if split and name in cached_splits else hfdata.ImageTensorDataset(*arrays[name])
                for name in ("train", "val")}
        train_set, val_set = sets["train"], sets["val"]
        if split:
            val_module = split[1]
            train_module = split[1] if "train" in cached_splits else net
    cache_s = time.perf_counter() - t0 if split else 0.0
    # Cached pixels are augmented per image but batched, on the device, after the loader (no loader-side work).
    batch_augment = hfdata.batch_augmentation(image_size) if cfg.augment and cfg.pipeline == "cached" else None

    workers = default_workers(cfg)
    train_loader = DataLoader(train_set, batch_size=cfg.batch_size, shuffle=True, drop_last=False,
                              num_workers=workers, pin_memory=accelerator.device.type == "cuda",
                              persistent_workers=workers > 0)
    val_loader = DataLoader(val_set, batch_size=max(cfg.batch_size, 64), shuffle=False, num_workers=workers,
                            pin_memory=accelerator.device.type == "cuda")

    groups = hfmodels.param_groups(model, cfg.lr, backbone_lr_scale=cfg.backbone_lr_scale,
                                   weight_decay=cfg.weight_decay)
    backbone_scale = hfmodels.effective_backbone_lr_scale(model, cfg.backbone_lr_scale)
    optimizer = OPTIMIZERS[cfg.optimizer](groups, cfg)
    steps_per_epoch = math.ceil(len(train_loader) / accelerator.num_processes)
    if cfg.max_train_batches:
        steps_per_epoch = min(steps_per_epoch, cfg.max_train_batches)
    scheduler = make_scheduler(optimizer, cfg, steps_per_epoch)

    prepared, optimizer, train_loader, val_loader = accelerator.prepare(train_module, optimizer, train_loader,
                                                                       val_loader)
    val_module = prepared if val_module is train_module else val_module.to(accelerator.device)
    train_module = torch.compile(prepared) if cfg.compile else prepared
    accelerator.register_for_checkpointing(scheduler)

    state = {"epoch": 0, "best_val_accuracy": -1.0, "best_epoch": 0, "history": [], "train_time_s": 0.0,
             "time_to_best_s": 0.0, "cache_s": cache_s}
    if cfg.resume and has_checkpoint(out):
        accelerator.load_state(str(out / CHECKPOINT_DIR))
        state = json.loads((out / CHECKPOINT_DIR / STATE_FILE).read_text())
        accelerator.print(f"resuming {out} after epoch {state['epoch']}")

    total_params, trainable_params = hfmodels.count_params(model)
    accelerator.print(f"{cfg.model} [{cfg.unfreeze}] {model.pretrained_source}: {trainable_params:,} of "
                      f"{total_params:,} parameters trainable; {accelerator.num_processes} process(es) on "
                      f"{accelerator.device}, mixed precision {accelerator.mixed_precision}"
                      + (f"; frozen-prefix features cached ({'+'.join(cached_splits)})" if split else ""))
    # --- tracking: start (hyper-parameters) ---
    tracker = tracking.RunTracker.start(
        accelerator, project=cfg.tracker_project, run_name=out.name, steps_per_epoch=steps_per_epoch,
        resume=state["epoch"] > 0,
        config={**dataclasses.asdict(cfg), "image_size": image_size, "pretrained_source": model.pretrained_source,
                "backbone_lr_scale_effective": backbone_scale, "params_total": total_params,
                "params_trainable": trainable_params, "num_processes": accelerator.num_processes,
                "mixed_precision": accelerator.mixed_precision})
    # --- tracking: end ---
    stale = state["epoch"] - state["best_epoch"]
    first_epoch = state["epoch"] + 1
    for epoch in range(first_epoch, cfg.epochs + 1):
        if cfg.stop_after_epochs and epoch - first_epoch >= cfg.stop_after_epochs:
            accelerator.print(f"stopping after {cfg.stop_after_epochs} epoch(s) as asked; --resume continues")
            tracker.finish()  # tracking
            return {}
        if cfg.early_stopping and stale >= cfg.early_stopping:
            accelerator.print(f"early stopping: no val-accuracy gain for {stale} epochs")
            break
        # Per-epoch seeding makes augmentation/dropout randomness independent of where a run was resumed.
        set_seed(cfg.seed + epoch * 1000 + accelerator.process_index)
        train_loader.set_epoch(epoch)
        t0 = time.perf_counter()
        hfmodels.set_train_mode(model)  # frozen BatchNorm stays in eval mode: its statistics never drift
        bar = tqdm(total=steps_per_epoch, desc=f"epoch {epoch}/{cfg.epochs}", leave=False,
                   disable=not (cfg.progress and accelerator.is_local_main_process and sys.stderr.isatty()))
        seen = correct = 0
        wait = 0.0
        loss_sum = torch.zeros((), device=accelerator.device)
        batches = iter(train_loader)
        for step in range(steps_per_epoch):
            t_wait = time.perf_counter()
            batch = next(batches, None)
            wait += time.perf_counter() - t_wait  # time the step sat idle waiting for data
            if batch is None:
                break
            x, y = batch
            if batch_augment is not None:
                x = batch_augment(x)
            if cfg.channels_last and x.ndim == 4:
                x = x.contiguous(memory_format=torch.channels_last)
            with accelerator.autocast():
                logits = train_module(x)
                loss = F.cross_entropy(logits.float(), y, label_smoothing=cfg.label_smoothing)
            if not torch.isfinite(loss):
                raise UserError(
                    f"non-finite loss ({loss.item()}) at epoch {epoch}, step {step}: lower --lr or use --mixed-precision no;"
                    f" the last finished epoch's checkpoint (if any) is kept in {out}")
            optimizer.zero_grad(set_to_none=True)
            accelerator.backward(loss)
            optimizer.step()
            scheduler.step()
            tracker.record_step(loss, optimizer)  # tracking: kept on the device, sent once per epoch
            loss_sum += loss.detach() * y.numel()
            correct += (logits.argmax(1) == y).sum().item()
            seen += y.numel()
            bar.update(1)
            bar.set_postfix(loss=f"{loss.item():.3f}", acc=f"{correct / seen:.3f}",
                            img_s=f"{seen * accelerator.num_processes / (time.perf_counter() - t0):.0f}")
        bar.close()
        stats = accelerator.reduce(torch.tensor([loss_sum.item(), correct, seen], device=accelerator.device), "sum")
        train_time = time.perf_counter() - t0
        val_loss, val_acc = validate(val_module, val_loader, accelerator)
        epoch_time = time.perf_counter() - t0
        row = {
            "epoch": epoch,
            "train_loss": stats[0].item() / stats[2].item(),
            "train_acc": stats[1].item() / stats[2].item(),
            "val_loss": val_loss,
            "val_acc": val_acc,
            "lr": optimizer.param_groups[0]["lr"],
            "epoch_time_s": epoch_time,
            "images_per_s": stats[2].item() / train_time,
            "data_wait_fraction": wait / train_time,
        }
        state["history"].append(row)
        state["train_time_s"] += epoch_time
        state["epoch"] = epoch
        improved = val_acc > state["best_val_accuracy"]
        t_save = time.perf_counter()
        if improved:
            state.update(best_val_accuracy=val_acc, best_epoch=epoch, time_to_best_s=state["train_time_s"])
            if accelerator.is_main_process:
                # The full model (also when only its suffix was stepped), in timm's Hub layout.
                hfmodels.save_model(model, out, class_names, extra_config=_checkpoint_meta(cfg, model, image_size))
        stale = epoch - state["best_epoch"]
        accelerator.print(
            f"epoch {epoch:3d}/{cfg.epochs}  train loss {row['train_loss']:.4f} acc {row['train_acc']:.4f}  "
            f"val loss {val_loss:.4f} acc {val_acc:.4f}{' *' if improved else ''}  "
            f"{row['images_per_s']:.0f} img/s  {epoch_time:.1f}s")
        accelerator.save_state(str(out / CHECKPOINT_DIR))
        row["checkpoint_s"] = time.perf_counter() - t_save  # best model + resume state, outside epoch_time_s
        tracker.log_epoch(epoch, row)  # tracking: the epoch's step losses/lrs + this history row
        if accelerator.is_main_process:
            _write_json(out / CHECKPOINT_DIR / STATE_FILE, state)
            write_history(out, state["history"])
        accelerator.wait_for_everyone()

    summary = None
    if accelerator.is_main_process:
        plots.plot_curves(state["history"], out / "curves.png", title=f"{cfg.model} [{cfg.unfreeze}]")
    metrics = evaluate_run(out, "test", cfg=cfg, accelerator=accelerator, arrays=arrays)
    if accelerator.is_main_process:
        summary = {
            "status": "complete",
            "model": cfg.model,
            "unfreeze": cfg.unfreeze,
            "pretrained_source": model.pretrained_source,
            "train_time_s": state["train_time_s"],
            "time_to_best_s": state["time_to_best_s"],
            "feature_cache_s": state.get("cache_s", 0.0),
            "epochs_run": state["epoch"],
            "images_per_s": _mean([r["images_per_s"] for r in state["history"]]),
            "peak_memory_mb": peak_memory_mb(accelerator.device),
            "params_total": total_params,
            "params_trainable": trainable_params,
            "backbone_lr_scale": backbone_scale,  # effective: 1 for scratch / random-init networks
            "best_epoch": state["best_epoch"],
            "best_val_accuracy": state["best_val_accuracy"],
            "test_accuracy": metrics["accuracy"],
            "checkpoint_bytes": (out / "model.safetensors").stat().st_size,
            "latency_ms_per_image": metrics.get("latency_ms_per_image"),
            "image_size": image_size,
            "class_names": class_names,
            "device": str(accelerator.device),
            "num_processes": accelerator.num_processes,
            "mixed_precision": accelerator.mixed_precision,
            "seed": cfg.seed,
            "splits_sha256": hfdata.manifest_hash(manifest),
            "splits": str(manifest),
            "args": dataclasses.asdict(cfg),
            "versions": library_versions(),
            "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        _write_json(out / "run.json", summary)
        tracker.log_final(state["epoch"], metrics, summary, out)  # tracking: test metrics, summary, figures
    tracker.finish()  # tracking
    accelerator.wait_for_everyone()
    return summary or {}


def check_head_trains(model: torch.nn.Module, unfreeze: str) -> None:
    """A new classifier starts random: freezing it would train a backbone under a fixed random head."""
    saved = model.pretrained_source.startswith(("local-dir:", "hf-hub:"))  # a trained head of this project's
    if not saved and not any(p.requires_grad for p in model.get_classifier().parameters()):
        raise UserError(f"--unfreeze {unfreeze} leaves the new, randomly initialised classifier frozen; "
                        f"add it: --unfreeze {unfreeze},head")


def default_workers(cfg: TrainConfig) -> int:
    """Loader processes: the cached path only indexes in-memory tensors (0 is fastest); the naive path decodes files,
    which overlaps with compute only in worker processes."""
    if cfg.num_workers is not None:
        return cfg.num_workers
    return min(4, os.cpu_count() or 1) if cfg.pipeline == "naive" and torch.cuda.is_available() else 0


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


@torch.no_grad()
def validate(module, loader, accelerator) -> tuple[float, float]:
    """Loss and accuracy over the whole split; gather_for_metrics drops the padding of uneven shards."""
    module.eval()
    losses, hits = [], []
    for x, y in loader:
        with accelerator.autocast():
            logits = module(x)
        loss = F.cross_entropy(logits.float(), y, reduction="none")
        loss, pred, y = accelerator.gather_for_metrics((loss, logits.argmax(1), y))
        losses.append(loss)
        hits.append(pred == y)
    return torch.cat(losses).mean().item(), torch.cat(hits).float().mean().item()


def _checkpoint_meta(cfg: TrainConfig, model, image_size: int) -> dict:
    return {"hf_animals": {"model": cfg.model, "unfreeze": cfg.unfreeze, "image_size": image_size,
                           "pretrained_source": model.pretrained_source}}


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else 0.0


# ----------------------------------------------------------------------------------------------------------------
# Evaluation of a saved run
# ----------------------------------------------------------------------------------------------------------------
def predict_arrays(model: torch.nn.Module, pixels: torch.Tensor, accelerator, batch_size: int = 128):
    """(predictions, probabilities) for uint8 images, batched and sharded over processes."""
    loader = accelerator.prepare(DataLoader(TensorDataset(pixels, torch.zeros(len(pixels), dtype=torch.long)),
                                            batch_size=batch_size))
    model = model.to(accelerator.device).eval()
    probs = []
    with torch.no_grad():
        for x, _ in loader:
            with accelerator.autocast():
                logits = model(x)
            probs.append(accelerator.gather_for_metrics(logits.float().softmax(1)))
    p = torch.cat(probs).cpu()
    return p.argmax(1), p


def latency_ms_per_image(model: torch.nn.Module, pixels: torch.Tensor, device, n: int = 8) -> float:
    """Single-image inference latency (batch 1, after one warm-up), as a deployment would see it."""
    model = model.to(device).eval()
    sample = pixels[:n].to(device)
    with torch.no_grad():
        model(sample[:1])
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        for i in range(len(sample)):
            model(sample[i:i + 1])
        if device.type == "cuda":
            torch.cuda.synchronize(device)
    return (time.perf_counter() - t0) / max(1, len(sample)) * 1000


def evaluate_run(run_dir: str | Path, split: str = "test", *, cfg: TrainConfig | None = None, accelerator=None,
                 arrays=None, data_dir: str | None = None) -> dict:
    """Metrics of a run's best checkpoint on one split; writes metrics(.json|_SPLIT.json) and its plots."""
    run_dir = Path(run_dir)
    if not (run_dir / "config.json").exists():
        raise UserError(f"{run_dir} has no config.json: not a finished run folder")
    if split not in ("train", "val", "test"):
        raise UserError(f"unknown split {split!r}; choose from train, val, test")
    if cfg is None:
        run_json = run_dir / "run.json"
        args = json.loads(run_json.read_text())["args"] if run_json.exists() else None
        if args is None:
            raise UserError(f"{run_dir} has no run.json: cannot tell which data and split it used")
        cfg = TrainConfig(**{**args, "resume": False, "overwrite": False})
        if data_dir:
            cfg.data_dir = data_dir
    accelerator = accelerator or make_accelerator(cfg)
    model, class_names = hfmodels.load_model(run_dir)
    dcfg = hfmodels.data_config(model)
    meta = json.loads((run_dir / "config.json").read_text()).get("hf_animals", {})
    image_size = int(meta.get("image_size") or cfg.image_size or dcfg["input_size"][-1])
    if arrays is None:
        manifest = Path(cfg.splits) if cfg.splits else run_dir / "splits.csv"
        arrays = hfdata.cached_split_arrays(cfg.data_dir, manifest, image_size, cache_dir=cfg.cache_dir)
    pixels, labels = arrays[split]
    net = Normalized(model, dcfg["mean"], dcfg["std"])
    preds, _ = predict_arrays(net, pixels, accelerator)
    metrics = hfmetrics.compute_metrics(preds.tolist(), labels.tolist(), class_names)
    metrics["split"] = split
    metrics["latency_ms_per_image"] = latency_ms_per_image(net, pixels, accelerator.device)
    if accelerator.is_main_process:
        suffix = "" if split == "test" else f"_{split}"
        _write_json(run_dir / f"metrics{suffix}.json", metrics)
        plots.plot_confusion_matrix(metrics["confusion_matrix"], class_names, run_dir / f"confusion_matrix{suffix}.png",
                                    title=f"{run_dir.name}: {split} accuracy {metrics['accuracy']:.3f}")
        wrong = (preds != labels).nonzero().flatten()[:32].tolist()
        if wrong:
            plots.plot_image_grid([pixels[i].permute(1, 2, 0).numpy() for i in wrong],
                                  [f"{class_names[labels[i]]}→{class_names[preds[i]]}" for i in wrong],
                                  run_dir / f"misclassified{suffix}.png", title="misclassified (true→predicted)")
    return metrics
