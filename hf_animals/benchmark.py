"""Naive loop vs hf_animals, same data, same machine, same epochs: where the time goes and what the caches save.

For every regime of the study's protocol (`catalogue.REGIMES`), `training.train` runs twice on one manifest and
seed: the naive baseline (`naive_datasets`, passed to training as its data source: torchvision ImageFolder decoding
and resizing every file every epoch, full forward every epoch) and hf_animals (decoded-image cache, plus the
frozen-prefix feature cache where the regime allows it). Everything else (model, initial weights, sampler order)
is identical, and augmentation is off in both, so both see the very same pixels in the same order and must reach
the same accuracies: the benchmark checks that. The deliberate differences are the throughput settings a newcomer
does not write (issue 13): the naive baseline is fp32 in PyTorch's default memory layout; hf_animals runs its
defaults (`auto` precision: bf16 where the hardware has it; channels_last). The loss agreement is checked at the
reduced precision's tolerance, and each side's precision is in the JSON (`mixed_precision`: naive / hf_animals).
Figures come from the run folders (history.json, run.json), so they are the numbers a real run reports.

Regimes the study trains with augmentation also get a short probe of the cached pipeline with augmentation on (a
few batches' worth of training images, no feature cache possible): the data wait and epoch time the study sees.
"""
from __future__ import annotations

import dataclasses
import json
import os
import platform
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.data import Dataset

from . import augment as hfaugment
from . import catalogue, image_cache, training, weights
from . import data as hfdata
from . import preprocess
from . import study as hfstudy
from .errors import UserError

DEFAULT_REGIMES = tuple(catalogue.REGIMES)  # every protocol regime: the study projection then covers the whole study
PHOTO_SMALL_RATIO = 0.5  # images whose median short side is below this fraction of source_size are "much smaller"
LOSS_RTOL = {"no": 1e-3, "bf16": 2e-2, "fp16": 2e-2}  # per-epoch train/val loss, relative, naive vs hf_animals
PROJECTION_EPOCHS = 30  # the study's final-run length: speedup_30 amortises the one-time caches over it

# The targets, checked on whatever machine ran the benchmark.
TARGETS = {
    "head_epoch_speedup": 20.0,  # fc-only / classifier-only, per epoch
    "head_30_epoch_speedup": 10.0,  # ... over 30 epochs including the one-time caches
    "partial_epoch_speedup": 2.0,  # part of the backbone unfrozen (layer3,layer4,fc), per epoch
    "max_data_wait_fraction": 0.05,  # full fine-tuning and the scratch CNN, image cache warm
    "study_speedup": 2.5,  # the whole protocol (sweep + every regime), projected at the study's split sizes
}


@dataclass
class BenchmarkConfig:
    data_dir: str | None = None  # None: generate sample images in work_dir
    work_dir: str | None = None  # None: a temporary folder, deleted afterwards
    per_class: int = 30  # training images per class
    val_per_class: int | None = None  # None: max(2, per_class // 4)
    test_per_class: int = 1  # only the end-of-run test evaluation reads it; not timed
    source_size: int = 300  # about Animals-10's typical photo size (short side), so decoding costs the same
    photo_sized: bool = True  # re-encode a --data-dir of much smaller images as source_size JPEGs (decode cost)
    image_size: int = 224
    epochs: int = 3
    batch_size: int = 32
    lr: float | None = None  # None: each family's optimizer's default lr (train_config), as training uses
    seed: int = 42
    regimes: tuple[str, ...] = DEFAULT_REGIMES
    mixed_precision: str | None = "auto"  # the hf_animals side only; the naive baseline is always fp32 ("no")
    num_workers: int | None = None  # None: 0 for the in-memory cache; the naive path decodes in workers on a GPU
    augment_batches: int = 3  # augmentation probe length for protocol regimes that augment; 0: no probe
    threads: int | None = None  # torch CPU threads for both pipelines; None: torch's default
    progress: bool = True

    def __post_init__(self) -> None:
        unknown = [r for r in self.regimes if r not in catalogue.REGIMES]
        if unknown:
            raise UserError(f"unknown regime(s) {', '.join(unknown)}; choose from {', '.join(catalogue.REGIMES)}")
        if not self.regimes:
            raise UserError("--regimes needs at least one regime")
        if self.per_class < 1 or self.epochs < 1 or self.batch_size < 1 or self.test_per_class < 1:
            raise UserError("--per-class, --epochs, --batch-size and --test-per-class must be at least 1")
        if self.val_per_class is None:
            self.val_per_class = max(2, self.per_class // 4)


def run_benchmark(cfg: BenchmarkConfig) -> dict:
    """Time both pipelines for every regime; return (and print) the figures of the `--json` file."""
    threads = torch.get_num_threads()
    if cfg.threads:
        # On a shared CPU, more threads than free cores make every op wait at OpenMP barriers for a descheduled
        # thread (here: 100x slower small convolutions); pinning the count keeps both pipelines comparable.
        torch.set_num_threads(cfg.threads)
    try:
        if cfg.work_dir:
            return _run_in(cfg, Path(cfg.work_dir))
        with tempfile.TemporaryDirectory(prefix="hf_animals_bench_") as tmp:
            return _run_in(cfg, Path(tmp))
    finally:
        torch.set_num_threads(threads)


def _run_in(cfg: BenchmarkConfig, work: Path) -> dict:
    work.mkdir(parents=True, exist_ok=True)
    data_dir = Path(cfg.data_dir) if cfg.data_dir else _sample_data(cfg, work)
    manifest = hfdata.prepare_splits(data_dir, work, train=cfg.per_class, val=cfg.val_per_class,
                                     test=cfg.test_per_class, seed=cfg.seed, reuse=False)
    source = {"data_dir": str(data_dir), "median_short_side": median_short_side(data_dir, manifest),
              "photo_copy": False}
    if cfg.data_dir and cfg.photo_sized and source["median_short_side"] < PHOTO_SMALL_RATIO * cfg.source_size:
        _say(cfg, f"[benchmark] note: {data_dir}'s images are much smaller than photos (median short side "
                  f"{source['median_short_side']} px): decoding them costs less than decoding Animals-10's photos, "
                  f"so the benchmark times {cfg.source_size} px JPEG copies instead (--images-as-is to skip)")
        data_dir = photo_sized_copy(data_dir, manifest, work / "photo_sized", cfg.source_size)
        manifest = hfdata.prepare_splits(data_dir, work, train=cfg.per_class, val=cfg.val_per_class,
                                         test=cfg.test_per_class, seed=cfg.seed, reuse=False)
        source["photo_copy"] = True
    counts = {s: sum(r["split"] == s for r in hfdata.read_manifest(manifest, data_dir, verify=False))
              for s in hfdata.SPLITS}

    # One-time cost of the decoded-image cache, timed into an empty cache folder (every regime then reads it).
    cache_dir = work / "cache"
    shutil.rmtree(cache_dir, ignore_errors=True)
    t0 = time.perf_counter()
    image_cache.cached_split_arrays(data_dir, manifest, cfg.image_size, cache_dir=cache_dir, verify=False)
    image_cache_s = time.perf_counter() - t0
    _say(cfg, f"[benchmark] image cache: {sum(counts.values())} images decoded once in {image_cache_s:.1f}s")

    regimes = {}
    for name in cfg.regimes:
        regimes[name] = bench_regime(catalogue.REGIMES[name], cfg, data_dir, manifest, cache_dir, work / "runs",
                                     image_cache_s, counts)
    result = {
        "device": device_description(),
        "config": {**dataclasses.asdict(cfg), "data_dir": str(data_dir), "counts": counts},
        "source_images": source,
        "image_cache_s": image_cache_s,
        "regimes": regimes,
    }
    result["study"] = study_projection(regimes, counts, image_cache_s, hfstudy.StudyConfig(data_dir="", output_dir=""),
                                       n_classes=len(hfdata.class_names(hfdata.read_manifest(manifest, data_dir,
                                                                                             verify=False))))
    result["targets"] = check_targets(regimes)
    if not result["study"]["missing"]:  # a projection of part of the study says nothing about the whole
        result["targets"].append(_check("whole study", "projected speedup", result["study"]["speedup"],
                                        TARGETS["study_speedup"], ">="))
    return result


def _sample_data(cfg: BenchmarkConfig, work: Path) -> Path:
    from .sample_data import write_sample_dataset

    per_class = cfg.per_class + cfg.val_per_class + cfg.test_per_class
    _say(cfg, f"[benchmark] generating sample data: 10 classes x {per_class} images (~{cfg.source_size}px)")
    return write_sample_dataset(work / "data", classes=10, per_class=per_class, size=cfg.source_size, seed=cfg.seed)


def median_short_side(data_dir: Path, manifest: Path, sample: int = 64) -> int:
    """Median shorter side (px) of up to `sample` images of the split, read from the headers only."""
    from PIL import Image

    rows = hfdata.read_manifest(manifest, data_dir, verify=False)
    sides = []
    for row in rows[::max(1, len(rows) // sample)][:sample]:
        with Image.open(Path(data_dir, row["path"])) as im:
            sides.append(min(im.size))
    return sorted(sides)[len(sides) // 2]


def photo_sized_copy(data_dir: Path, manifest: Path, out: Path, short_side: int) -> Path:
    """The split's images re-encoded as JPEG (quality 90) with their short side scaled to `short_side`, in the same
    class folders: what a photo costs to open, decode and resize, whatever the source folder holds. Only the
    manifest's images are copied, so splitting the copy with the same counts takes every file of it."""
    from PIL import Image

    shutil.rmtree(out, ignore_errors=True)
    for row in hfdata.read_manifest(manifest, data_dir, verify=False):
        target = out / Path(row["path"]).with_suffix(".jpg")
        target.parent.mkdir(parents=True, exist_ok=True)
        with Image.open(Path(data_dir, row["path"])) as im:
            rgb = preprocess.rgb_image(im)
            scale = short_side / min(rgb.size)
            rgb.resize((round(rgb.width * scale), round(rgb.height * scale)), Image.Resampling.BICUBIC).save(
                target, "JPEG", quality=90)
    return out


def bench_regime(regime: catalogue.Regime, cfg: BenchmarkConfig, data_dir: Path, manifest: Path, cache_dir: Path,
                 runs: Path, image_cache_s: float, counts: dict) -> dict:
    """Naive and hf_animals runs of one regime (plus the augmentation probe) → one row of the `regimes` table."""
    pretrained = catalogue.FAMILIES[regime.family].pretrained
    available = pretrained and weights.hub_weights_available(regime.model)
    # Without the pretrained weights (offline), random init: epoch times do not depend on the weights' values, and
    # agreement is checked either way. The run records it as the offline fallback, so the table says so.
    base = dict(model=regime.model, unfreeze=regime.unfreeze, data_dir=str(data_dir), splits=str(manifest),
                epochs=cfg.epochs, batch_size=cfg.batch_size, lr=cfg.lr, image_size=cfg.image_size, augment=False,
                mixed_precision=cfg.mixed_precision, seed=cfg.seed, pretrained=available,
                offline_fallback=pretrained and not available, num_workers=cfg.num_workers or 0,
                cache_dir=str(cache_dir), progress=cfg.progress, overwrite=True)
    folder = runs / regime.name.replace(":", "__").replace(",", "+")
    _say(cfg, f"[benchmark] {regime.name}: naive baseline")
    # issue 13: the naive baseline is always fp32 and NCHW; `mixed_precision` is the hf_animals side's (and its probe's)
    naive = _timed_run({**base, "num_workers": naive_workers(cfg), "mixed_precision": "no", "channels_last": False},
                       folder / "naive", counts, naive_datasets)
    _say(cfg, f"[benchmark] {regime.name}: hf_animals")
    fast = _timed_run(base, folder / "hf_animals", counts)

    naive_epoch_s, epoch_s = naive["epoch_s"], fast["epoch_s"]
    cache_s = image_cache_s + fast["feature_cache_s"]
    n = PROJECTION_EPOCHS
    pairs = list(zip(naive["history"], fast["history"]))
    diffs = [abs(a["val_acc"] - b["val_acc"]) for a, b in pairs]
    # Losses too: a model that predicts one class everywhere would "agree" on accuracy whatever it learned.
    loss_diff = max(abs(a[k] - b[k]) / max(abs(a[k]), 1e-12) for a, b in pairs for k in ("train_loss", "val_loss"))
    loss_tol = LOSS_RTOL[fast["mixed_precision"]]  # the reduced side decides how close fp32 can be
    row = {
        "weights": catalogue.weight_source(fast["pretrained_source"], regime.model).label,
        "mixed_precision": {"naive": naive["mixed_precision"], "hf_animals": fast["mixed_precision"]},
        "channels_last": {"naive": False, "hf_animals": base.get("channels_last", True)},
        "naive_epoch_s": naive_epoch_s,
        "epoch_s": epoch_s,
        "speedup": naive_epoch_s / epoch_s,
        "speedup_30": n * naive_epoch_s / (n * epoch_s + cache_s),
        "cache_s": cache_s,
        "image_cache_s": image_cache_s,
        "feature_cache_s": fast["feature_cache_s"],
        "feature_cache": fast["feature_cache_s"] > 0,
        "data_wait_fraction": fast["data_wait_fraction"],
        "data_wait_fraction_naive": naive["data_wait_fraction"],
        "val_acc_naive": naive["history"][-1]["val_acc"],
        "val_acc": fast["history"][-1]["val_acc"],
        # Same pixels, same order, same initial weights: only float reduction order differs (batched prefix
        # features vs the full forward), which can flip at most a near-tied image. One validation image of slack.
        "val_acc_max_diff": max(diffs),
        "loss_max_rel_diff": loss_diff,
        "agree": max(diffs) <= 1 / counts["val"] + 1e-9 and loss_diff <= loss_tol,
        "per_image_s": {"naive": naive["per_image_s"], "hf_animals": fast["per_image_s"]},
        # Whole train() calls (model set-up, caches, checkpoints, test evaluation, plots) at the benchmark's epochs.
        "run_s_naive": naive["run_s"],
        "run_s": fast["run_s"],
    }
    if regime.augment and cfg.augment_batches:
        probe = augmentation_probe(regime, cfg, base, folder, counts)
        row["data_wait_fraction_augment"] = probe["data_wait_fraction"]
        row["epoch_s_augment"] = _epoch_estimate(probe["per_image_s"], counts)
        row["per_image_s"]["hf_animals_augment"] = probe["per_image_s"]
    return row


def augmentation_probe(regime: catalogue.Regime, cfg: BenchmarkConfig, base: dict, folder: Path,
                       counts: dict) -> dict:
    """The cached pipeline with the study's augmentation, on `augment_batches` batches' worth of training images
    (all validation images): the data wait and per-image costs the study really sees."""
    images = cfg.augment_batches * cfg.batch_size
    _say(cfg, f"[benchmark] {regime.name}: augmentation probe ({images} training images x 2 epochs)")
    rows = hfdata.read_manifest(base["splits"], base["data_dir"], verify=False)
    train = [r for r in rows if r["split"] == "train"]
    picked = train[::max(1, len(train) // images)][:images]  # spread over the classes
    manifest = hfdata.write_manifest(picked + [r for r in rows if r["split"] != "train"],
                                     folder / "probe_split" / hfdata.MANIFEST_NAME)
    return _timed_run({**base, "splits": str(manifest), "epochs": 2, "augment": True},
                      folder / "hf_animals_augment", {**counts, "train": len(picked)})


def _timed_run(base: dict, out: Path, counts: dict, data_source: training.DataSource | None = None) -> dict:
    """One run and its steady-state figures. Epoch 1 is left out when there are more: it carries one-off warm-up
    (allocator, cudnn.benchmark autotuning, the naive loop's cold OS file cache)."""
    cfg = training.TrainConfig(**base, output_dir=str(out))
    t0 = time.perf_counter()
    summary = training.train(cfg, data_source=data_source)
    run_s = time.perf_counter() - t0
    history = json.loads((out / "history.json").read_text())
    steady = history[1:] if len(history) > 1 else history
    # images_per_s = images stepped / training time, so the rest of an epoch is validation: per-image costs of both
    # parts estimate an epoch of another size (a full epoch from a short probe, the study's 300/75 per class).
    train_img = [1 / r["images_per_s"] for r in steady]
    val_img = [(r["epoch_time_s"] - counts["train"] / r["images_per_s"]) / counts["val"] for r in steady]
    return {
        "history": history,
        # checkpoint_s: the per-epoch save (resume state, best model); it is wall time of every epoch too, and no
        # longer negligible once an epoch is a head on cached features.
        "epoch_s": _mean([r["epoch_time_s"] + r.get("checkpoint_s", 0.0) for r in steady]),
        "run_s": run_s,
        "data_wait_fraction": _mean([r["data_wait_fraction"] for r in steady]),
        "feature_cache_s": float(summary.get("feature_cache_s", 0.0)),
        "pretrained_source": summary["pretrained_source"],
        "mixed_precision": summary["mixed_precision"],  # resolved: no / fp16 / bf16
        "per_image_s": {"train": _mean(train_img), "val": _mean(val_img)},
    }


# ----------------------------------------------------------------------------------------------------------------
# The naive baseline
# ----------------------------------------------------------------------------------------------------------------
def naive_datasets(cfg: training.TrainConfig, rows: list[dict], class_names: list[str],
                   image_size: int) -> tuple[Dataset, Dataset]:
    """The baseline data path (a `training.DataSource`): torchvision ImageFolder that opens, decodes and resizes
    every file every epoch, per-image augmentation in the loader."""
    augment = hfaugment.train_augmentation(image_size) if cfg.augment else None
    return (naive_split(cfg.data_dir, rows, "train", class_names, image_size, augment),
            naive_split(cfg.data_dir, rows, "val", class_names, image_size, None))


def naive_split(data_dir: str, rows: list[dict], split: str, class_names: list[str], image_size: int, augment):
    """One split as an ImageFolder. Samples follow the manifest order, so both pipelines see the same index ->
    image mapping and the same shuffles; images go through the same decode (`data.load_rgb_resized`)."""
    from torchvision.datasets import ImageFolder

    index = {name: i for i, name in enumerate(class_names)}
    picked = [r for r in rows if r["split"] == split]
    wanted = {str(Path(data_dir, r["path"])) for r in picked}

    def load(path: str) -> torch.Tensor:
        pixels = torch.from_numpy(preprocess.load_rgb_resized(path, image_size)).permute(2, 0, 1).contiguous()
        return augment(pixels) if augment is not None else pixels

    folder = ImageFolder(data_dir, loader=load, is_valid_file=lambda p: p in wanted, allow_empty=True)
    folder.samples = [(str(Path(data_dir, r["path"])), index[r["label"]]) for r in picked]
    return folder


def naive_workers(cfg: BenchmarkConfig) -> int:
    """Loader processes of the naive path: it decodes files, which overlaps with compute only in worker processes
    (on a GPU machine); the cached path indexes in-memory tensors, where 0 is fastest."""
    if cfg.num_workers is not None:
        return cfg.num_workers
    return min(4, os.cpu_count() or 1) if torch.cuda.is_available() else 0


def _epoch_estimate(per_image_s: dict, counts: dict) -> float:
    return counts["train"] * per_image_s["train"] + counts["val"] * per_image_s["val"]


def study_projection(regimes: dict, counts: dict, image_cache_s: float, study: hfstudy.StudyConfig,
                     n_classes: int) -> dict:
    """Whole-study wall time, naive vs hf_animals, from the measured per-image costs.

    The study's runs (catalogue.PROTOCOL finals plus the scratch lr x batch sweep) at its split sizes, at the
    benchmark's image size. A protocol row that augments uses the augmentation probe's cost and no feature cache
    (augmentation makes the frozen prefix's output change every epoch); the naive side is charged without
    augmentation, which favours the baseline. Rows whose regime was not benchmarked are listed in `missing`.
    """
    big = {"train": study.train_per_class * n_classes, "val": study.val_per_class * n_classes,
           "test": study.test_per_class * n_classes}
    runs = [(r, study.epochs) for r in catalogue.PROTOCOL if r.family in study.families]
    if "scratch" in study.families:
        scratch = next(r for r in catalogue.PROTOCOL if r.family == "scratch")
        runs += [(scratch, study.sweep_epochs)] * (len(study.sweep_lrs) * len(study.sweep_batch_sizes))
    naive_s = fast_s = 0.0
    covered, missing = 0, []
    for regime, epochs in runs:
        row = regimes.get(regime.name)
        costs = row and (row["per_image_s"].get("hf_animals_augment") if regime.augment
                         else row["per_image_s"]["hf_animals"])
        if not costs:
            missing.append(regime.name + (" (augmented, no probe)" if row else ""))
            continue
        covered += 1
        naive_s += epochs * _epoch_estimate(row["per_image_s"]["naive"], big)
        fast_s += epochs * _epoch_estimate(costs, big)
        if not regime.augment:
            fast_s += row["feature_cache_s"] * (big["train"] + big["val"]) / (counts["train"] + counts["val"])
    fast_s += image_cache_s * sum(big.values()) / sum(counts.values()) if covered else 0.0
    return {"runs": covered, "missing": sorted(set(missing)), "counts": big, "naive_s": naive_s,
            "hf_animals_s": fast_s, "speedup": naive_s / fast_s if fast_s else float("nan"),
            "epochs": study.epochs, "sweep_epochs": study.sweep_epochs}


def check_targets(regimes: dict) -> list[dict]:
    """The issue's speed targets for the regimes that were measured: value, threshold, met.

    Which target applies comes from the catalogue's regime: head-only (feature cache for train and val), part of
    the backbone unfrozen (feature cache for val), or everything trained (no feature cache: the data path shows).
    """
    checks = []
    for name, row in regimes.items():
        regime = catalogue.REGIMES[name]
        everything = catalogue.unfreeze_modules(regime.unfreeze) == ("all",)
        if regime.head_only:
            checks.append(_check(name, "epoch speedup", row["speedup"], TARGETS["head_epoch_speedup"], ">="))
            checks.append(_check(name, "30-epoch speedup incl. caches", row["speedup_30"],
                                 TARGETS["head_30_epoch_speedup"], ">="))
        elif not everything:
            checks.append(_check(name, "epoch speedup", row["speedup"], TARGETS["partial_epoch_speedup"], ">="))
        else:
            checks.append(_check(name, "data wait", row["data_wait_fraction"], TARGETS["max_data_wait_fraction"],
                                 "<"))
            if "data_wait_fraction_augment" in row:
                checks.append(_check(name, "data wait, augmented", row["data_wait_fraction_augment"],
                                     TARGETS["max_data_wait_fraction"], "<"))
    return checks


def _check(regime: str, what: str, value: float, threshold: float, op: str) -> dict:
    met = value >= threshold if op == ">=" else value < threshold
    return {"regime": regime, "target": f"{what} {op} {threshold:g}", "value": value, "met": bool(met)}


def format_report(result: dict) -> str:
    """The printed summary: one row per regime, the study projection and the targets."""
    c = result["config"]
    workers = "auto" if c["num_workers"] is None else c["num_workers"]
    lines = [f"device: {result['device']}",
             f"data: {c['counts']['train']} train / {c['counts']['val']} val images at {c['image_size']} px, "
             f"{c['epochs']} epochs, batch {c['batch_size']}, workers {workers}; epoch times: "
             + (f"mean of epochs 2..{c['epochs']} (epoch 1 is warm-up)" if c["epochs"] > 1 else "epoch 1 only"),
             f"one-time image cache: {result['image_cache_s']:.2f}s",
             _source_line(result["source_images"], c["source_size"]),
             "precision: naive " + "/".join(sorted({r["mixed_precision"]["naive"] for r in result["regimes"].values()}))
             + ", hf_animals " + "/".join(sorted({r["mixed_precision"]["hf_animals"]
                                                 for r in result["regimes"].values()})), ""]
    head = ("regime", "naive s/ep", "hf s/ep", "speedup", "30-ep x", "cache s", "run s naive/hf", "wait", "wait aug",
            "val naive", "val hf", "agree")
    rows = [head]
    for name, r in result["regimes"].items():
        rows.append((name + (" *" if r["weights"] == catalogue.OFFLINE_SOURCE else ""), f"{r['naive_epoch_s']:.2f}",
                     f"{r['epoch_s']:.3f}", f"{r['speedup']:.1f}x", f"{r['speedup_30']:.1f}x", f"{r['cache_s']:.2f}",
                     f"{r['run_s_naive']:.1f}/{r['run_s']:.1f}",
                     f"{r['data_wait_fraction']:.1%}",
                     f"{r['data_wait_fraction_augment']:.1%}" if "data_wait_fraction_augment" in r else "-",
                     f"{r['val_acc_naive']:.4f}", f"{r['val_acc']:.4f}", "yes" if r["agree"] else "NO"))
    widths = [max(len(row[i]) for row in rows) for i in range(len(head))]
    lines += ["  ".join(cell.ljust(w) if i == 0 else cell.rjust(w) for i, (cell, w) in enumerate(zip(row, widths)))
              for row in rows]
    if any(r["weights"] == catalogue.OFFLINE_SOURCE for r in result["regimes"].values()):
        lines.append(f"* {catalogue.OFFLINE_SOURCE}: pretrained weights not available offline; epoch times do not "
                     "depend on weight values")
    lines.append("cache s = one-time image cache + this regime's frozen-prefix feature cache; run s = whole train() "
                 "calls; wait = data-wait fraction of step time (hf_animals, no augmentation); wait aug = the same "
                 "with the study's augmentation (short probe)")
    s = result["study"]
    lines += ["", f"whole study ({s['runs']} runs: {s['epochs']}-epoch finals + {s['sweep_epochs']}-epoch sweep, "
                  f"{s['counts']['train']}/{s['counts']['val']}/{s['counts']['test']} images, {c['image_size']} px), "
                  f"projected: naive {_hms(s['naive_s'])}, hf_animals {_hms(s['hf_animals_s'])} "
                  f"({s['speedup']:.1f}x)"]
    if s["missing"]:
        lines.append(f"  not in the projection (not benchmarked): {', '.join(s['missing'])}")
    lines += ["", "targets:"]
    lines += [f"  [{'met' if t['met'] else 'NOT met'}] {t['regime']}: {t['target']} (measured {t['value']:.3g})"
              for t in result["targets"]]
    return "\n".join(lines)


def _source_line(source: dict, source_size: int) -> str:
    if source["photo_copy"]:
        return (f"images: {source['data_dir']} has a median short side of {source['median_short_side']} px, much "
                f"smaller than photos; timed on {source_size} px JPEG copies so decoding costs what photos cost")
    return f"images: {source['data_dir']}, median short side {source['median_short_side']} px"


def _hms(seconds: float) -> str:
    seconds = int(round(seconds))
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    return f"{seconds // 60}m{seconds % 60:02d}s"


def device_description() -> str:
    if torch.cuda.is_available():
        return f"cuda: {torch.cuda.get_device_name(0)}"
    cpu = platform.processor() or platform.machine()
    try:
        names = [ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                 if ln.startswith("model name")]
        cpu = names[0] if names else cpu
    except OSError:
        pass
    return f"cpu: {cpu}, {len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else os.cpu_count()} " \
           f"cores, {torch.get_num_threads()} torch threads"


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else float("nan")


def _say(cfg: BenchmarkConfig, text: str) -> None:
    if cfg.progress:
        print(text, flush=True)
