"""Every figure of a run and of a study, drawn from plain data (history rows, metrics, comparison rows).

Each function writes one PNG and returns its Path. Nothing here computes metrics or reads run folders, so the
same functions serve training, the study and the report. Agg backend: figures render headless (CI, Accelerate
workers) and every figure is closed after saving, so long studies do not pile up open figures.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Mapping, Sequence

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402  (the backend must be chosen before pyplot is imported)
import numpy as np  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

DPI = 120
TRAIN_COLOR, VAL_COLOR = "tab:blue", "tab:orange"


def _save(fig, path) -> Path:
    """Write the figure as PNG (creating the folder) and always close it."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, format="png", dpi=DPI, bbox_inches="tight", facecolor="white")
    finally:
        plt.close(fig)
    return path


def _number(value) -> float:
    """float of a history/CSV cell; None or "" (a missing value) is NaN, so a line simply has a gap."""
    return np.nan if value is None or value == "" else float(value)


def _series(history: Sequence[Mapping], key: str) -> tuple[np.ndarray, np.ndarray]:
    """(epochs, values) of one history column (rows from history.json or history.csv alike)."""
    epochs = np.array([_number(row.get("epoch", i + 1)) for i, row in enumerate(history)])
    values = np.array([_number(row.get(key)) for row in history])
    return epochs, values


def _style_accuracy_axis(ax, values: np.ndarray) -> None:
    """Accuracy as a fraction: show the honest 0-1 range rather than a zoomed-in one."""
    finite = values[np.isfinite(values)]
    if finite.size and finite.min() >= 0 and finite.max() <= 1:
        ax.set_ylim(0, 1.02)


def _draw_curves(ax_loss, ax_acc, history: Sequence[Mapping], label: str = "") -> None:
    """Train vs validation loss (left) and accuracy (right), with the best validation epoch marked."""
    prefix = f"{label}: " if label else ""
    for ax, metric, name in ((ax_loss, "loss", "loss"), (ax_acc, "acc", "accuracy")):
        all_values = []
        for split, color in (("train", TRAIN_COLOR), ("val", VAL_COLOR)):
            epochs, values = _series(history, f"{split}_{metric}")
            all_values.append(values)
            if np.isfinite(values).any():
                ax.plot(epochs, values, marker="o", markersize=3, color=color,
                        label="train" if split == "train" else "validation")
        ax.set_title(f"{prefix}{name}", fontsize=10)
        ax.set_xlabel("epoch")
        ax.set_ylabel(name)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        if metric == "acc":
            _style_accuracy_axis(ax, np.concatenate(all_values))

    epochs, val_acc = _series(history, "val_acc")
    if np.isfinite(val_acc).any():
        best = int(np.nanargmax(val_acc))
        for ax in (ax_loss, ax_acc):
            ax.axvline(epochs[best], color="gray", linestyle=":", linewidth=1)
        ax_acc.plot(epochs[best], val_acc[best], marker="*", markersize=11, color=VAL_COLOR, linestyle="none",
                    label=f"best val {val_acc[best]:.3f} (epoch {epochs[best]:g})")
    for ax in (ax_loss, ax_acc):
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8, loc="best")


def plot_curves(history: Sequence[Mapping], path, title: str = "") -> Path:
    """Training vs validation loss and accuracy per epoch (history rows: epoch, train_loss, train_acc, val_loss,
    val_acc, ...); a dotted line marks the epoch with the best validation accuracy."""
    if not history:
        raise ValueError("plot_curves needs at least one history row")
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(11, 4.2))
    _draw_curves(ax_loss, ax_acc, history)
    fig.suptitle(title or "Training curves")
    fig.tight_layout()
    return _save(fig, path)


def plot_curves_grid(runs: Mapping[str, Sequence[Mapping]], path, title: str = "") -> Path:
    """plot_curves for several runs (e.g. each regime's best model), one row of loss + accuracy per run."""
    runs = {name: history for name, history in runs.items() if history}
    if not runs:
        raise ValueError("plot_curves_grid needs at least one run with history")
    fig, axes = plt.subplots(len(runs), 2, figsize=(11, 3.4 * len(runs)), squeeze=False)
    for (name, history), (ax_loss, ax_acc) in zip(runs.items(), axes):
        _draw_curves(ax_loss, ax_acc, history, label=name)
    fig.suptitle(title or "Training curves")
    fig.tight_layout()
    return _save(fig, path)


def _check_confusion(cm, class_names: Sequence[str]) -> np.ndarray:
    cm = np.asarray(cm, dtype=np.int64)
    if cm.ndim != 2 or cm.shape != (len(class_names), len(class_names)):
        raise ValueError(f"confusion matrix of shape {cm.shape} does not match {len(class_names)} class names")
    return cm


def _draw_confusion(ax, cm: np.ndarray, class_names: Sequence[str], title: str):
    """Counts as text; shading = share of the true class's images (row-normalised), so rare classes stay
    readable. Rows = true class, columns = predicted class."""
    k = len(class_names)
    row_totals = cm.sum(axis=1, keepdims=True)
    shares = np.divide(cm, row_totals, out=np.zeros(cm.shape, dtype=float), where=row_totals > 0)
    image = ax.imshow(shares, cmap="Blues", vmin=0, vmax=1)
    fontsize = max(5, 10 - k // 5)
    for i in range(k):
        for j in range(k):
            color = "white" if shares[i, j] > 0.5 else ("black" if cm[i, j] else "lightgray")
            ax.text(j, i, str(cm[i, j]), ha="center", va="center", fontsize=fontsize, color=color)
    ax.set_xticks(range(k), labels=class_names, rotation=45, ha="right", rotation_mode="anchor", fontsize=9)
    ax.set_yticks(range(k), labels=class_names, fontsize=9)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    total = cm.sum()
    accuracy = f" (accuracy {np.trace(cm) / total:.3f}, n={total})" if total else ""
    ax.set_title(f"{title}{accuracy}", fontsize=10)
    return image


def plot_confusion_matrix(cm, class_names: Sequence[str], path, title: str = "") -> Path:
    """One confusion matrix: class names on both axes, counts annotated, row-normalised shading."""
    cm = _check_confusion(cm, class_names)
    side = max(5.0, 0.55 * len(class_names) + 3.0)
    fig, ax = plt.subplots(figsize=(side + 1.0, side))
    image = _draw_confusion(ax, cm, class_names, title or "Confusion matrix")
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="share of true class")
    fig.tight_layout()
    return _save(fig, path)


def plot_confusion_matrices(matrices: Mapping[str, object], class_names: Sequence[str], path,
                            title: str = "") -> Path:
    """Several confusion matrices side by side (e.g. the three best models), one shared colour scale."""
    matrices = {name: _check_confusion(cm, class_names) for name, cm in matrices.items()}
    if not matrices:
        raise ValueError("plot_confusion_matrices needs at least one matrix")
    ncols = min(3, len(matrices))
    nrows = math.ceil(len(matrices) / ncols)
    side = max(4.5, 0.5 * len(class_names) + 2.5)
    fig, axes = plt.subplots(nrows, ncols, figsize=(side * ncols + 1.0, side * nrows + 0.4), squeeze=False,
                             layout="constrained")  # constrained: room for the suptitle and the shared colorbar
    image = None
    for ax, (name, cm) in zip(axes.flat, matrices.items()):
        image = _draw_confusion(ax, cm, class_names, name)
    for ax in list(axes.flat)[len(matrices):]:
        ax.axis("off")
    fig.suptitle(title or "Confusion matrices")
    fig.colorbar(image, ax=axes.ravel().tolist(), fraction=0.02, pad=0.02, label="share of true class")
    return _save(fig, path)


def _as_hwc(image) -> np.ndarray:
    """HWC (or HW) array for imshow; also accepts the CHW uint8 tensors of the decoded-image cache."""
    array = np.asarray(image)
    if array.ndim == 3 and array.shape[0] in (1, 3) and array.shape[-1] not in (1, 3, 4):
        array = array.transpose(1, 2, 0)
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    return array


def plot_image_grid(images_uint8_hwc: Sequence, titles: Sequence[str], path, ncols: int = 8,
                    title: str = "") -> Path:
    """A grid of images with a small caption each (misclassified test images, sample images per class).

    An empty list still writes a figure saying so (e.g. no misclassified images), so the file always exists.
    """
    if len(images_uint8_hwc) != len(titles):
        raise ValueError(f"{len(images_uint8_hwc)} images but {len(titles)} titles")
    count = len(images_uint8_hwc)
    if count == 0:
        fig, ax = plt.subplots(figsize=(4, 1.5))
        ax.text(0.5, 0.5, "no images", ha="center", va="center", fontsize=12, color="dimgray")
        ax.axis("off")
        if title:
            ax.set_title(title)
        return _save(fig, path)

    ncols = max(1, min(int(ncols), count))
    nrows = math.ceil(count / ncols)
    lines = max(str(t).count("\n") + 1 for t in titles)
    fig, axes = plt.subplots(nrows, ncols, figsize=(1.7 * ncols, (1.7 + 0.2 * lines) * nrows + 0.5),
                             squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, image, caption in zip(axes.flat, images_uint8_hwc, titles):
        array = _as_hwc(image)
        ax.imshow(array, cmap="gray" if array.ndim == 2 else None, vmin=0 if array.ndim == 2 else None,
                  vmax=255 if array.ndim == 2 and array.dtype == np.uint8 else None)
        ax.set_title(str(caption), fontsize=7)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return _save(fig, path)


def _run_styles(count: int):
    """(color, linestyle) pairs that stay distinguishable beyond 10 runs."""
    colors = plt.get_cmap("tab10" if count <= 10 else "tab20").colors
    styles = ("-", "--", "-.", ":")
    return [(colors[i % len(colors)], styles[(i // len(colors)) % len(styles)]) for i in range(count)]


def plot_val_accuracy_overlay(runs: Mapping[str, Sequence[Mapping]], path, title: str = "") -> Path:
    """Validation accuracy per epoch of every run on one axis (run name -> history rows)."""
    runs = {name: history for name, history in runs.items() if history}
    if not runs:
        raise ValueError("plot_val_accuracy_overlay needs at least one run with history")
    fig, ax = plt.subplots(figsize=(9, 5))
    all_values = []
    for (name, history), (color, style) in zip(runs.items(), _run_styles(len(runs))):
        epochs, values = _series(history, "val_acc")
        all_values.append(values)
        ax.plot(epochs, values, color=color, linestyle=style, marker="o", markersize=2.5, label=name)
    ax.set_xlabel("epoch")
    ax.set_ylabel("validation accuracy")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    _style_accuracy_axis(ax, np.concatenate(all_values))
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False)
    ax.set_title(title or "Validation accuracy of all runs")
    fig.tight_layout()
    return _save(fig, path)


def plot_sweep_heatmap(rows: Sequence[Mapping], path, title: str = "", value_key: str = "val_acc",
                       chosen: tuple[float, int] | None = None) -> Path:
    """The sweep as a heat map: learning rate (rows) x batch size (columns) -> validation accuracy.

    Rows need lr, batch_size and value_key; untried combinations stay blank; if a combination appears twice
    the best value is shown. The chosen (lr, batch size) is outlined: pass the study's choice, so a tie is shown
    as the study broke it (`runs.select_best`); default: the first highest cell.
    """
    rows = [row for row in rows if row.get(value_key) not in (None, "")]
    if not rows:
        raise ValueError(f"plot_sweep_heatmap needs rows with lr, batch_size and {value_key}")
    lrs = sorted({float(row["lr"]) for row in rows})
    batch_sizes = sorted({int(row["batch_size"]) for row in rows})
    grid = np.full((len(lrs), len(batch_sizes)), np.nan)
    for row in rows:
        i, j = lrs.index(float(row["lr"])), batch_sizes.index(int(row["batch_size"]))
        grid[i, j] = np.nanmax([grid[i, j], float(row[value_key])])

    fig, ax = plt.subplots(figsize=(max(4.5, 1.2 * len(batch_sizes) + 2.5), max(3.5, 0.8 * len(lrs) + 1.8)))
    cmap = plt.get_cmap("viridis").with_extremes(bad="whitesmoke")
    image = ax.imshow(np.ma.masked_invalid(grid), cmap=cmap, aspect="auto")
    finite = grid[np.isfinite(grid)]
    middle = (finite.min() + finite.max()) / 2
    for i in range(len(lrs)):
        for j in range(len(batch_sizes)):
            value = grid[i, j]
            text, color = ("not run", "gray") if np.isnan(value) else (f"{value:.3f}", "black" if value > middle else "white")
            ax.text(j, i, text, ha="center", va="center", fontsize=9, color=color)
    if chosen is not None:
        best_i, best_j = lrs.index(float(chosen[0])), batch_sizes.index(int(chosen[1]))
    else:
        best_i, best_j = np.unravel_index(np.nanargmax(grid), grid.shape)
    ax.add_patch(plt.Rectangle((best_j - 0.5, best_i - 0.5), 1, 1, fill=False, edgecolor="red", linewidth=2))
    ax.set_xticks(range(len(batch_sizes)), labels=[str(b) for b in batch_sizes])
    ax.set_yticks(range(len(lrs)), labels=[f"{lr:g}" for lr in lrs])
    ax.set_xlabel("batch size")
    ax.set_ylabel("learning rate")
    label = "validation accuracy" if value_key == "val_acc" else value_key.replace("_", " ")
    fig.colorbar(image, ax=ax, label=label)
    ax.set_title(title or "Sweep: validation accuracy")
    fig.tight_layout()
    return _save(fig, path)


def _human(value: float) -> str:
    """Compact number for bar labels: 11.2M, 5.1k, 0.873, 42.0."""
    if abs(value) >= 1e6:
        return f"{value / 1e6:.1f}M"
    if abs(value) >= 1e4:
        return f"{value / 1e3:.0f}k"
    if abs(value) >= 1e3:
        return f"{value / 1e3:.1f}k"
    return f"{value:.3f}" if abs(value) < 1 else f"{value:.1f}"


# (row keys tried in order, axis label): comparison.csv rows say test_accuracy, a bare metrics dict says accuracy.
COMPARISON_BARS = (
    (("test_accuracy", "accuracy"), "test accuracy"),
    (("total_s", "train_time_s"), "total time: caches + training (s)"),
    (("params_trainable",), "trainable parameters"),
)
NAME_KEYS = ("label", "name", "run")


def _first(row: Mapping, keys: Sequence[str]):
    """The value of the first of keys present (and not None) in row, else None."""
    return next((row[key] for key in keys if row.get(key) not in (None, "")), None)


def plot_comparison_bars(rows: Sequence[Mapping], path, title: str = "", name_keys: Sequence[str] = NAME_KEYS,
                         metrics: Sequence[tuple[Sequence[str], str]] = COMPARISON_BARS) -> Path:
    """Accuracy vs total time (caches + training) vs trainable parameters, one horizontal bar per run and panel.

    Bars are named by the first of name_keys a row has (label, name, run). metrics: (row keys, axis label)
    pairs; a missing value shows as "n/a". A panel spanning more than two orders of magnitude (head-only vs
    full fine-tuning parameters) uses a log scale.
    """
    if not rows:
        raise ValueError("plot_comparison_bars needs at least one row")
    names = [str(_first(row, name_keys) or f"run {i + 1}") for i, row in enumerate(rows)]
    y = np.arange(len(rows))
    fig, axes = plt.subplots(1, len(metrics), figsize=(4.2 * len(metrics) + 1.5, max(2.5, 0.45 * len(rows) + 1.4)),
                             sharey=True, squeeze=False)
    colors = [color for color, _ in _run_styles(len(rows))]
    for ax, (keys, label) in zip(axes[0], metrics):
        keys = (keys,) if isinstance(keys, str) else tuple(keys)
        values = np.array([_number(_first(row, keys)) for row in rows])
        finite = values[np.isfinite(values)]
        ax.barh(y, np.nan_to_num(values), color=colors)
        log = finite.size and finite.min() > 0 and finite.max() / finite.min() > 100
        if log:
            ax.set_xscale("log")
        for yi, value in zip(y, values):
            if np.isfinite(value) and value > 0:
                ax.text(value, yi, f" {_human(value)}", va="center", fontsize=8)
            else:  # at the axis' left edge (x in axes units), which also works on a log axis
                ax.text(0.01, yi, "n/a" if np.isnan(value) else _human(value), va="center", fontsize=8,
                        transform=ax.get_yaxis_transform())
        if finite.size:
            high = finite.max()
            ax.set_xlim(right=high * (8 if log else 1.25) if high > 0 else 1)
        if any("acc" in key for key in keys) and finite.size and finite.max() <= 1:  # fractions: 0-1 axis
            ax.set_xlim(0, 1.15)
        if log:
            ax.set_xlabel("log scale")
        ax.set_title(label, fontsize=10)
        ax.grid(axis="x", alpha=0.3)
    axes[0][0].set_yticks(y, labels=names, fontsize=9)
    axes[0][0].invert_yaxis()
    fig.suptitle(title or "Runs compared")
    fig.tight_layout()
    return _save(fig, path)


def plot_lr_probe(lrs: Sequence[float], losses: Sequence[float], smoothed: Sequence[float], chosen_lr: float, path,
                  title: str = "") -> Path:
    """Learning-rate range test: training loss against lr (log axis), raw and smoothed, the chosen lr marked.

    The y range follows the smoothed curve up to twice its starting value, so the divergence at the end of the sweep
    does not squash the part the choice was made on."""
    if not lrs:
        raise ValueError("plot_lr_probe needs at least one point")
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    ax.plot(lrs, [_number(v) for v in losses], color="0.75", lw=1, label="loss per step")
    ax.plot(lrs, [_number(v) for v in smoothed], color=TRAIN_COLOR, lw=2, label="smoothed")
    ax.axvline(chosen_lr, color="tab:red", ls="--", lw=1.2, label=f"chosen lr {chosen_lr:.2g}")
    finite = np.array([_number(v) for v in smoothed], dtype=float)
    finite = finite[np.isfinite(finite)]
    if finite.size:
        ax.set_ylim(max(0.0, finite.min() * 0.9), min(finite.max(), 2 * finite[0]) * 1.05 + 1e-9)
    ax.set_xscale("log")
    ax.set_xlabel("learning rate")
    ax.set_ylabel("training loss")
    ax.legend()
    ax.set_title(title or "Learning-rate range test")
    fig.tight_layout()
    return _save(fig, path)
