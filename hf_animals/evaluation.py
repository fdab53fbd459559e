"""Evaluation of a saved run: its best checkpoint on one split, the metrics files and plots, inference latency.

Training calls `evaluate_run` once at the end (test split, with the images it already holds in memory);
scripts/evaluate.py calls it on any finished run folder, re-reading the run's own split from its run.json. Both
go through the same model wrapper (`Normalized`) and the same batched, process-sharded prediction, so a test
accuracy is the same number whoever computes it.
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch.utils.data import DataLoader, TensorDataset

from . import costs
from . import data as hfdata
from . import preprocess
from . import image_cache
from . import metrics as hfmetrics
from . import models as hfmodels
from . import plots
from . import precision as hfprecision
from . import recipe
from . import runs
from .errors import UserError


def make_accelerator(mixed_precision: str | None = None, **kwargs):
    """The Accelerator of training and evaluation: devices and processes from the launcher/config; precision
    `auto` (or None) resolved for this process's device by `precision.accelerator_precision`. `kwargs`: more
    Accelerator arguments (training's trackers: `tracking.accelerator_kwargs`)."""
    from accelerate import Accelerator
    from accelerate.utils import DataLoaderConfiguration

    try:
        kwargs["mixed_precision"] = hfprecision.accelerator_precision(mixed_precision)  # issue 13
        # A seedable sampler gives every process the same seeded, epoch-dependent order, so resume and multi-process
        # runs shuffle exactly like an uninterrupted single run.
        return Accelerator(dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True), **kwargs)
    except ValueError as err:  # e.g. fp16 asked for on a machine that cannot do it
        raise UserError(f"mixed precision {mixed_precision!r}: {err}") from None


class Normalized(torch.nn.Module):
    """uint8 images in, logits out: normalisation runs on the model's device (GPU when there is one)."""

    def __init__(self, model: torch.nn.Module, mean, std):
        super().__init__()
        self.model, self.mean, self.std = model, tuple(mean), tuple(std)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(preprocess.normalize_batch(x, self.mean, self.std) if x.dtype == torch.uint8 else x)


def predict_arrays(model: torch.nn.Module, pixels: torch.Tensor, accelerator, batch_size: int = 128,
                   tta: bool = False):
    """(predictions, probabilities) for uint8 images, batched and sharded over processes; `tta` averages the
    softmax of the image and its mirror image (`recipe.tta_probabilities`)."""
    loader = accelerator.prepare(DataLoader(TensorDataset(pixels, torch.zeros(len(pixels), dtype=torch.long)),
                                            batch_size=batch_size))
    model = model.to(accelerator.device).eval()
    probs = []
    with torch.no_grad():
        for x, _ in loader:
            with accelerator.autocast():
                p = recipe.tta_probabilities(model, x) if tta else model(x).float().softmax(1)
            probs.append(accelerator.gather_for_metrics(p))
    p = torch.cat(probs).cpu()
    return p.argmax(1), p


def evaluate_run(run_dir: str | Path, split: str = "test", *, accelerator=None, arrays=None,
                 data_dir: str | None = None, mixed_precision: str | None = None, tta: bool = False) -> dict:
    """Metrics of a run's best checkpoint on one split; writes metrics(.json|_SPLIT.json) and its plots.

    tta: also the metrics with test-time augmentation (image + mirror image), under metrics["tta"]; the plain
    numbers are never replaced.

    `arrays` ({split: (uint8 pixels, labels)}) are the images training already holds; without them the run's
    own manifest is read from its run.json arguments (`data_dir` when the image folder moved since training).
    `mixed_precision` (auto/no/fp16/bf16, evaluate.py's) overrides the run's own for inference; the precision the
    predictions were computed in is recorded in the metrics.
    """
    run_dir = Path(run_dir)
    if not (run_dir / "config.json").exists():
        raise UserError(f"{run_dir} has no config.json: not a finished run folder")
    if split not in hfdata.SPLITS:
        raise UserError(f"unknown split {split!r}; choose from {', '.join(hfdata.SPLITS)}")
    model, class_names = hfmodels.load_model(run_dir)
    preprocessing = preprocess.Preprocessing.from_pretrained_cfg(model.pretrained_cfg)
    if arrays is None:
        arrays, run_precision = _split_arrays_of(run_dir, data_dir)
        accelerator = accelerator or make_accelerator(mixed_precision or run_precision)
    pixels, labels = arrays[split]
    net = Normalized(model, preprocessing.mean, preprocessing.std)
    preds, _ = predict_arrays(net, pixels, accelerator)
    metrics = hfmetrics.compute_metrics(preds.tolist(), labels.tolist(), class_names)
    metrics["split"] = split
    if tta:
        tta_preds, _ = predict_arrays(net, pixels, accelerator, tta=True)
        tta_metrics = hfmetrics.compute_metrics(tta_preds.tolist(), labels.tolist(), class_names)
        metrics["tta"] = {k: tta_metrics[k] for k in ("accuracy", "precision_macro", "recall_macro", "f1_macro")}
        metrics["tta"]["views"] = "original + horizontal flip, mean softmax"
    metrics["mixed_precision"] = accelerator.mixed_precision  # issue 13: what the predictions were computed in
    metrics["latency"] = costs.measure_latency(net, pixels, accelerator.device)  # median + spread, batch 1 and 32
    metrics["latency_ms_per_image"] = metrics["latency"]["ms_per_image"]  # the batch-1 median
    if accelerator.is_main_process:
        _write_metrics(run_dir, split, metrics, class_names, pixels, labels, preds)
    return metrics


def _split_arrays_of(run_dir: Path, data_dir: str | None) -> tuple[dict, str | None]:
    """The decoded images of the run's own split at its trained size, and its mixed precision, from run.json."""
    if not (run_dir / runs.RUN_JSON).exists():
        raise UserError(f"{run_dir} has no {runs.RUN_JSON}: cannot tell which data and split it used")
    run = runs.read_json(run_dir / runs.RUN_JSON)
    args = run.get("args") or {}
    data_dir = data_dir or args.get("data_dir")
    manifest = Path(args["splits"]) if args.get("splits") else run_dir / runs.SPLITS_FILE
    arrays = image_cache.cached_split_arrays(data_dir, manifest, int(run["image_size"]),
                                             cache_dir=args.get("cache_dir"))
    return arrays, args.get("mixed_precision")


def _write_metrics(run_dir: Path, split: str, metrics: dict, class_names, pixels, labels, preds) -> None:
    suffix = "" if split == "test" else f"_{split}"
    runs.write_json(run_dir / f"metrics{suffix}.json", metrics)
    plots.plot_confusion_matrix(metrics["confusion_matrix"], class_names, run_dir / f"confusion_matrix{suffix}.png",
                                title=f"{run_dir.name}: {split} accuracy {metrics['accuracy']:.3f}")
    wrong = (preds != labels).nonzero().flatten()[:32].tolist()
    if wrong:
        plots.plot_image_grid([pixels[i].permute(1, 2, 0).numpy() for i in wrong],
                              [f"{class_names[labels[i]]}→{class_names[preds[i]]}" for i in wrong],
                              run_dir / f"misclassified{suffix}.png", title="misclassified (true→predicted)")
