"""Plots: every figure is written from plain data as a real, non-blank PNG of a sensible size, and closed."""
from __future__ import annotations

import matplotlib
import numpy as np
import pytest
from PIL import Image

from hf_animals import plots

plt = plots.plt
NAMES = ["butterfly", "cat", "chicken", "cow", "dog", "elephant", "horse", "sheep", "spider", "squirrel"]


def history(epochs=5, scale=1.0):
    return [{"epoch": e, "train_loss": 2.0 / e, "val_loss": 2.2 / e + 0.05 * e, "train_acc": 1 - 0.8 / e,
             "val_acc": scale * (0.9 - 0.7 / e), "lr": 1e-3, "epoch_time_s": 1.5, "images_per_s": 200.0}
            for e in range(1, epochs + 1)]


def assert_png(path, min_size=(300, 200), max_size=(4000, 4000)) -> tuple[int, int]:
    """A valid PNG, within a sensible pixel size, not a blank canvas; no figure left open."""
    assert path.is_file()
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(path) as image:
        image.verify()
    with Image.open(path) as image:
        assert image.format == "PNG"
        width, height = image.size
        pixels = np.asarray(image.convert("L"))
    assert min_size[0] <= width <= max_size[0] and min_size[1] <= height <= max_size[1], (width, height)
    assert pixels.std() > 5  # something was drawn
    assert plt.get_fignums() == []
    return width, height


def test_backend_is_agg():
    assert matplotlib.get_backend().lower() == "agg"


def test_plot_curves(tmp_path):
    out = plots.plot_curves(history(), tmp_path / "nested" / "curves.png", title="resnet18 [all]")
    assert out == tmp_path / "nested" / "curves.png"
    width, height = assert_png(out)
    assert width > height  # two panels side by side


def test_plot_curves_single_epoch_and_missing_values(tmp_path):
    rows = [{"epoch": 1, "train_loss": 1.0, "train_acc": 0.5, "val_loss": None, "val_acc": None}]
    assert_png(plots.plot_curves(rows, tmp_path / "one.png"))
    csv_rows = [{k: str(v) for k, v in row.items()} for row in history(3)]  # as csv.DictReader gives them
    csv_rows[1]["val_loss"] = ""
    assert_png(plots.plot_curves(csv_rows, tmp_path / "from_csv.png"))
    with pytest.raises(ValueError):
        plots.plot_curves([], tmp_path / "empty.png")
    assert plt.get_fignums() == []


def test_plot_confusion_matrix(tmp_path):
    rng = np.random.default_rng(0)
    cm = rng.integers(0, 5, (10, 10)) + np.diag(rng.integers(5, 20, 10))
    cm[3] = 0  # a class with no test images: no division by zero
    width, height = assert_png(plots.plot_confusion_matrix(cm.tolist(), NAMES, tmp_path / "cm.png", title="test"))
    small_w, _ = assert_png(plots.plot_confusion_matrix([[3, 1], [0, 2]], ["cat", "dog"], tmp_path / "cm2.png"))
    assert width > small_w  # grows with the number of classes so labels stay readable
    assert 0.7 < width / height < 1.5
    with pytest.raises(ValueError, match="does not match"):
        plots.plot_confusion_matrix([[1, 2], [3, 4]], NAMES, tmp_path / "bad.png")


def test_plot_confusion_matrices(tmp_path):
    cms = {f"model {i}": (np.eye(10, dtype=int) * (10 + i) + 1).tolist() for i in range(3)}
    width, height = assert_png(plots.plot_confusion_matrices(cms, NAMES, tmp_path / "cms.png"), max_size=(4000, 2000))
    assert width > 2 * height


def test_plot_image_grid(tmp_path):
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (32, 32, 3), dtype=np.uint8) for _ in range(11)]
    images.append(rng.integers(0, 256, (32, 32), dtype=np.uint8))  # grayscale
    images.append(rng.integers(0, 256, (3, 40, 40), dtype=np.uint8))  # CHW, as in the decoded-image cache
    titles = [f"true: {NAMES[i % 10]}\npred: {NAMES[(i + 1) % 10]}" for i in range(len(images))]
    width, height = assert_png(plots.plot_image_grid(images, titles, tmp_path / "grid.png", ncols=8, title="wrong"))
    assert width > height  # 2 rows of 8


def test_plot_image_grid_empty_and_mismatch(tmp_path):
    assert_png(plots.plot_image_grid([], [], tmp_path / "none.png", title="misclassified"), min_size=(150, 80))
    with pytest.raises(ValueError, match="titles"):
        plots.plot_image_grid([np.zeros((8, 8, 3), np.uint8)], [], tmp_path / "bad.png")


def test_plot_val_accuracy_overlay(tmp_path):
    runs = {f"resnet18 [{u}]": history(6, 1 - 0.05 * i) for i, u in enumerate(["fc", "layer4,fc", "all"])}
    runs["animals_cnn5 [all] random init (offline)"] = history(3, 0.5)
    runs["no history yet"] = []
    assert_png(plots.plot_val_accuracy_overlay(runs, tmp_path / "overlay.png"))


def test_plot_curves_grid(tmp_path):
    runs = {"best resnet18": history(4), "best mobilenetv2_100": history(6)}
    width, height = assert_png(plots.plot_curves_grid(runs, tmp_path / "curves_grid.png"))
    assert height > width / 2


def test_plot_sweep_heatmap(tmp_path):
    rows = [{"lr": lr, "batch_size": bs, "val_acc": 0.5 + i * 0.1 + j * 0.02}
            for i, lr in enumerate([1e-4, 3e-4, 1e-3]) for j, bs in enumerate([16, 32, 64]) if (i, j) != (0, 2)]
    rows.append({"lr": 1e-3, "batch_size": 16, "val_acc": 0.1})  # a repeat: the better value is shown
    assert_png(plots.plot_sweep_heatmap(rows, tmp_path / "sweep.png"))
    with pytest.raises(ValueError):
        plots.plot_sweep_heatmap([], tmp_path / "empty.png")


def test_plot_comparison_bars(tmp_path):
    # Rows as the study's comparison table has them (label, test_accuracy, ...), one value missing.
    rows = [
        {"run": "r1", "label": "animals_cnn5 [all] random init (offline)", "test_accuracy": 0.41,
         "train_time_s": 120.0, "params_trainable": 1_200_000},
        {"run": "r2", "label": "resnet18 [fc]", "test_accuracy": 0.88, "train_time_s": 30.0,
         "params_trainable": 5_130},
        {"run": "r3", "label": "resnet18 [all]", "test_accuracy": 0.95, "train_time_s": None,
         "params_trainable": 11_181_642},
    ]
    width, height = assert_png(plots.plot_comparison_bars(rows, tmp_path / "bars.png"))
    assert width > height
    # Plain metrics-style rows (name, accuracy) work too.
    plain = [{"name": "a", "accuracy": 0.5, "train_time_s": 3.0, "params_trainable": 10},
             {"name": "b", "accuracy": 0.7, "train_time_s": 4.0, "params_trainable": 20}]
    assert_png(plots.plot_comparison_bars(plain, tmp_path / "plain.png"))
