"""Test-set metrics (accuracy, macro and per-class precision/recall/F1, confusion matrix) with HF `evaluate`.

The Hub's metric scripts (`evaluate.load("accuracy")`, ...) need the network even when cached, so the numbers
come from the project's own metric module, `metric_modules/classification_report`, loaded by path (works
offline). This file only turns its output into the metrics.json layout keyed by class name.
"""
from __future__ import annotations

import functools
from pathlib import Path
from typing import Sequence

import numpy as np

METRIC_MODULE_DIR = Path(__file__).resolve().parent / "metric_modules" / "classification_report"


@functools.cache
def load_classification_report():
    """The offline `evaluate` module, loaded once per process (loading copies and imports a script).

    keep_in_memory: no arrow cache files under ~/.cache/huggingface/metrics, so parallel processes never
    collide on their file locks.
    """
    import evaluate  # imported here: it pulls in datasets/pyarrow, which plotting-only callers do not need

    return evaluate.load(str(METRIC_MODULE_DIR), keep_in_memory=True)


def compute_metrics(predictions: Sequence[int], references: Sequence[int], class_names: Sequence[str]) -> dict:
    """metrics.json content for class-index predictions vs references; label i is class_names[i].

    Keys: accuracy, precision_macro, recall_macro, f1_macro, per_class {name: {precision, recall, f1, support}},
    confusion_matrix (rows = true, columns = predicted), class_names, num_samples. Plain Python numbers, so
    the dict goes straight to json.dump. A class never predicted gets precision 0 (no NaN); a class absent from
    both inputs is listed with support 0 and left out of the macro averages.
    """
    predictions = np.asarray(predictions, dtype=np.int64).ravel()
    references = np.asarray(references, dtype=np.int64).ravel()
    class_names = [str(name) for name in class_names]
    if not class_names:
        raise ValueError("compute_metrics needs at least one class name")
    if predictions.shape != references.shape:
        raise ValueError(f"{predictions.size} predictions but {references.size} references")
    if predictions.size == 0:
        raise ValueError("compute_metrics needs at least one prediction")

    report = load_classification_report().compute(
        predictions=predictions, references=references, num_classes=len(class_names)
    )
    per_class = {
        name: {
            "precision": report["precision"][i],
            "recall": report["recall"][i],
            "f1": report["f1"][i],
            "support": report["support"][i],
        }
        for i, name in enumerate(class_names)
    }
    return {
        "accuracy": report["accuracy"],
        "precision_macro": report["precision_macro"],
        "recall_macro": report["recall_macro"],
        "f1_macro": report["f1_macro"],
        "per_class": per_class,
        "confusion_matrix": report["confusion_matrix"],
        "class_names": class_names,
        "num_samples": int(predictions.size),
    }


def format_classification_report(metrics: dict) -> str:
    """A plain-text table of compute_metrics' output (per class, then macro and accuracy) for logs and stdout."""
    names = list(metrics["per_class"])
    width = max([len(name) for name in names] + [len("macro avg")])
    lines = [f"{'':<{width}}  precision  recall  f1-score  support"]
    for name in names:
        row = metrics["per_class"][name]
        lines.append(f"{name:<{width}}  {row['precision']:9.3f}  {row['recall']:6.3f}  {row['f1']:8.3f}"
                     f"  {row['support']:7d}")
    total = metrics.get("num_samples", sum(row["support"] for row in metrics["per_class"].values()))
    lines.append("")
    lines.append(f"{'accuracy':<{width}}  {'':9}  {'':6}  {metrics['accuracy']:8.3f}  {total:7d}")
    lines.append(f"{'macro avg':<{width}}  {metrics['precision_macro']:9.3f}  {metrics['recall_macro']:6.3f}"
                 f"  {metrics['f1_macro']:8.3f}  {total:7d}")
    return "\n".join(lines)
