"""Plots: every figure shows its data (read back from the drawn artists), is written as a real, non-blank PNG, and
is closed."""
from __future__ import annotations

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


@pytest.fixture
def drawn(monkeypatch) -> list:
    """The figures the plots module saves, kept for inspection after they are written and closed."""
    figures = []
    save = plots._save

    def keep(fig, path):
        figures.append(fig)
        return save(fig, path)

    monkeypatch.setattr(plots, "_save", keep)
    return figures


def assert_png(path) -> np.ndarray:
    """A valid PNG that is not a blank canvas (read back from disk); no figure left open. Returns its grey pixels."""
    with Image.open(path) as image:
        image.verify()
    with Image.open(path) as image:
        assert image.format == "PNG"
        pixels = np.asarray(image.convert("L"), dtype=float)
    assert pixels.std() > 5 and (pixels < 128).mean() > 0.001  # something dark was drawn on the white page
    assert plt.get_fignums() == []
    return pixels


def line(ax, label):
    return next(ln for ln in ax.get_lines() if ln.get_label() == label)


def test_plot_curves_draws_each_series_and_marks_the_best_epoch(tmp_path, drawn):
    rows = history()
    out = plots.plot_curves(rows, tmp_path / "nested" / "curves.png", title="resnet18 [all]")
    assert out == tmp_path / "nested" / "curves.png"
    assert_png(out)
    ax_loss, ax_acc = drawn[0].axes
    np.testing.assert_allclose(line(ax_loss, "train").get_ydata(), [r["train_loss"] for r in rows])
    np.testing.assert_allclose(line(ax_acc, "validation").get_ydata(), [r["val_acc"] for r in rows])
    best = max(rows, key=lambda r: r["val_acc"])
    star = next(ln for ln in ax_acc.get_lines() if ln.get_label().startswith("best val"))
    assert star.get_xdata()[0] == best["epoch"] and f"{best['val_acc']:.3f}" in star.get_label()
    assert drawn[0]._suptitle.get_text() == "resnet18 [all]"


def test_plot_curves_single_epoch_and_missing_values(tmp_path, drawn):
    rows = [{"epoch": 1, "train_loss": 1.0, "train_acc": 0.5, "val_loss": None, "val_acc": None}]
    assert_png(plots.plot_curves(rows, tmp_path / "one.png"))
    assert [ln.get_label() for ln in drawn[0].axes[0].get_lines()] == ["train"]  # no validation line to draw
    csv_rows = [{k: str(v) for k, v in row.items()} for row in history(3)]  # as csv.DictReader gives them
    csv_rows[1]["val_loss"] = ""
    assert_png(plots.plot_curves(csv_rows, tmp_path / "from_csv.png"))
    val_loss = line(drawn[1].axes[0], "validation").get_ydata()
    assert np.isnan(val_loss[1]) and np.isfinite(val_loss[[0, 2]]).all()  # a gap, not a zero
    with pytest.raises(ValueError):
        plots.plot_curves([], tmp_path / "empty.png")
    assert plt.get_fignums() == []


def cell_texts(ax) -> dict[tuple[int, int], str]:
    """{(row, column): text} of the numbers annotated in a matrix plot."""
    return {(round(t.get_position()[1]), round(t.get_position()[0])): t.get_text() for t in ax.texts}


def test_plot_confusion_matrix_annotates_the_counts_and_shades_row_shares(tmp_path, drawn):
    rng = np.random.default_rng(0)
    cm = rng.integers(0, 5, (10, 10)) + np.diag(rng.integers(5, 20, 10))
    cm[3] = 0  # a class with no test images: no division by zero
    assert_png(plots.plot_confusion_matrix(cm.tolist(), NAMES, tmp_path / "cm.png", title="test"))
    ax = drawn[0].axes[0]
    texts = cell_texts(ax)
    assert texts == {(i, j): str(cm[i, j]) for i in range(10) for j in range(10)}
    shades = ax.images[0].get_array()
    rows = cm.sum(axis=1, keepdims=True)
    np.testing.assert_allclose(shades[rows[:, 0] > 0], (cm / np.maximum(rows, 1))[rows[:, 0] > 0])
    assert not shades[3].any()
    assert [t.get_text() for t in ax.get_yticklabels()] == NAMES
    assert f"accuracy {np.trace(cm) / cm.sum():.3f}" in ax.get_title()
    with pytest.raises(ValueError, match="does not match"):
        plots.plot_confusion_matrix([[1, 2], [3, 4]], NAMES, tmp_path / "bad.png")


def test_plot_confusion_matrices_one_panel_per_model(tmp_path, drawn):
    cms = {f"model {i}": (np.eye(10, dtype=int) * (10 + i) + 1).tolist() for i in range(3)}
    assert_png(plots.plot_confusion_matrices(cms, NAMES, tmp_path / "cms.png"))
    panels = [ax for ax in drawn[0].axes if ax.images]
    assert [ax.get_title().split(" (")[0] for ax in panels] == list(cms)
    for ax, cm in zip(panels, cms.values()):
        assert cell_texts(ax)[(0, 0)] == str(cm[0][0]) and cell_texts(ax)[(0, 1)] == str(cm[0][1])


def test_plot_image_grid_shows_every_image_with_its_caption(tmp_path, drawn):
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (32, 32, 3), dtype=np.uint8) for _ in range(11)]
    images.append(rng.integers(0, 256, (32, 32), dtype=np.uint8))  # grayscale
    chw = rng.integers(0, 256, (3, 40, 40), dtype=np.uint8)  # CHW, as in the decoded-image cache
    images.append(chw)
    titles = [f"true: {NAMES[i % 10]}\npred: {NAMES[(i + 1) % 10]}" for i in range(len(images))]
    assert_png(plots.plot_image_grid(images, titles, tmp_path / "grid.png", ncols=8, title="wrong"))
    shown = [ax for ax in drawn[0].axes if ax.images]
    assert [ax.get_title() for ax in shown] == titles
    np.testing.assert_array_equal(shown[0].images[0].get_array(), images[0])
    np.testing.assert_array_equal(shown[-1].images[0].get_array(), chw.transpose(1, 2, 0))


def test_plot_image_grid_empty_and_mismatch(tmp_path, drawn):
    assert_png(plots.plot_image_grid([], [], tmp_path / "none.png", title="misclassified"))
    assert [t.get_text() for t in drawn[0].axes[0].texts] == ["no images"]
    with pytest.raises(ValueError, match="titles"):
        plots.plot_image_grid([np.zeros((8, 8, 3), np.uint8)], [], tmp_path / "bad.png")


def test_plot_val_accuracy_overlay_draws_one_line_per_run_with_history(tmp_path, drawn):
    runs = {f"resnet18 [{u}]": history(6, 1 - 0.05 * i) for i, u in enumerate(["fc", "layer4,fc", "all"])}
    runs["animals_cnn5 [all] random init (offline)"] = history(3, 0.5)
    runs["no history yet"] = []
    assert_png(plots.plot_val_accuracy_overlay(runs, tmp_path / "overlay.png"))
    ax = drawn[0].axes[0]
    assert [ln.get_label() for ln in ax.get_lines()] == list(runs)[:-1]
    np.testing.assert_allclose(line(ax, "resnet18 [all]").get_ydata(), [r["val_acc"] for r in runs["resnet18 [all]"]])


def test_plot_curves_grid_one_row_per_run(tmp_path, drawn):
    runs = {"best resnet18": history(4), "best mobilenetv2_100": history(6)}
    assert_png(plots.plot_curves_grid(runs, tmp_path / "curves_grid.png"))
    titles = [ax.get_title() for ax in drawn[0].axes]
    assert titles == ["best resnet18: loss", "best resnet18: accuracy", "best mobilenetv2_100: loss",
                      "best mobilenetv2_100: accuracy"]
    assert len(line(drawn[0].axes[2], "train").get_xdata()) == 6


def test_plot_sweep_heatmap_cells_and_the_chosen_configuration(tmp_path, drawn):
    rows = [{"lr": lr, "batch_size": bs, "val_acc": 0.5 + i * 0.1 + j * 0.02}
            for i, lr in enumerate([1e-4, 3e-4, 1e-3]) for j, bs in enumerate([16, 32, 64]) if (i, j) != (0, 2)]
    rows.append({"lr": 1e-3, "batch_size": 16, "val_acc": 0.1})  # a repeat: the better value is shown
    assert_png(plots.plot_sweep_heatmap(rows, tmp_path / "sweep.png"))
    texts = cell_texts(drawn[0].axes[0])
    assert texts[(0, 2)] == "not run" and texts[(2, 0)] == f"{0.7:.3f}" and texts[(1, 1)] == f"{0.62:.3f}"
    outline = drawn[0].axes[0].patches[0]
    assert outline.get_xy() == (2 - 0.5, 2 - 0.5)  # the highest cell: lr 1e-3, batch 64
    # A tie is outlined where the caller's selection rule put it, not where argmax happens to look first.
    tie = [{"lr": 0.01, "batch_size": 16, "val_acc": 0.5}, {"lr": 0.03, "batch_size": 16, "val_acc": 0.5}]
    plots.plot_sweep_heatmap(tie, tmp_path / "tie.png", chosen=(0.03, 16))
    assert drawn[1].axes[0].patches[0].get_xy() == (0 - 0.5, 1 - 0.5)
    with pytest.raises(ValueError):
        plots.plot_sweep_heatmap([], tmp_path / "empty.png")


def test_plot_comparison_bars_bar_lengths_are_the_values(tmp_path, drawn):
    # Rows as the study's comparison table has them (label, test_accuracy, ...), one value missing.
    rows = [
        {"run": "r1", "label": "animals_cnn5 [all] random init (offline)", "test_accuracy": 0.41,
         "train_time_s": 120.0, "params_trainable": 1_200_000},
        {"run": "r2", "label": "resnet18 [fc]", "test_accuracy": 0.88, "train_time_s": 30.0,
         "params_trainable": 5_130},
        {"run": "r3", "label": "resnet18 [all]", "test_accuracy": 0.95, "train_time_s": None,
         "params_trainable": 11_181_642},
    ]
    assert_png(plots.plot_comparison_bars(rows, tmp_path / "bars.png"))
    acc, time_ax, params = drawn[0].axes
    assert [p.get_width() for p in acc.patches] == [0.41, 0.88, 0.95]
    assert [t.get_text() for t in acc.get_yticklabels()] == [r["label"] for r in rows]
    assert "n/a" in [t.get_text() for t in time_ax.texts]  # the missing training time is said, not drawn as 0
    assert params.get_xscale() == "log" and acc.get_xscale() == "linear"  # 5k vs 11M parameters
    # Plain metrics-style rows (name, accuracy) work too.
    plain = [{"name": "a", "accuracy": 0.5, "train_time_s": 3.0, "params_trainable": 10},
             {"name": "b", "accuracy": 0.7, "train_time_s": 4.0, "params_trainable": 20}]
    assert_png(plots.plot_comparison_bars(plain, tmp_path / "plain.png"))
    assert [p.get_width() for p in drawn[1].axes[0].patches] == [0.5, 0.7]
