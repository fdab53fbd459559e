"""Experiment tracking on real tiny runs: what TensorBoard's event files and trackio's local store hold, read back
with their own readers, equals the run's history.json / metrics.json; hyper-parameters arrive flat and without None;
a misspelt or missing tracker is one clear error."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
from PIL import Image

from hf_animals import study, tracking, training
from hf_animals.cli import run_main
from hf_animals.errors import UserError

ROOT = Path(__file__).resolve().parents[1]
PROJECT = "hf_animals_tracking_test"
EPOCHS = 2
STEPS = 5  # 10 classes x 8 train images / batch 16, no partial batch: the epoch loss is the plain mean of its steps


def tiny_config(sample_dir, cache_dir, out, **kw) -> training.TrainConfig:
    args = dict(model="animals_cnn5", data_dir=str(sample_dir), output_dir=str(out), epochs=EPOCHS, batch_size=16,
                image_size=32, train_per_class=8, val_per_class=4, test_per_class=4, progress=False,
                cache_dir=str(cache_dir), report_to="tensorboard,trackio", tracker_project=PROJECT)
    return training.TrainConfig(**{**args, **kw})


@pytest.fixture(scope="module")
def tracked_run(sample_dir, cache_dir, tmp_path_factory):
    """A 2-epoch run tracked by TensorBoard and trackio, interrupted after epoch 1 and resumed (as on a preemptible
    machine): the trackers must hold each epoch exactly once."""
    pytest.importorskip("trackio")
    out = tmp_path_factory.mktemp("tracked") / "cnn_tracked"
    assert training.train(tiny_config(sample_dir, cache_dir, out, stop_after_epochs=1)) == {}
    summary = training.train(tiny_config(sample_dir, cache_dir, out, resume=True))
    history = json.loads((out / "history.json").read_text())
    metrics = json.loads((out / "metrics.json").read_text())
    assert summary["status"] == "complete" and len(history) == EPOCHS
    return out, history, metrics, summary


def _values(points) -> list[float]:
    return [value for _, value in points]


# ----------------------------------------------------------------------------------------------------------------
# TensorBoard
# ----------------------------------------------------------------------------------------------------------------
def test_tensorboard_epochs_equal_history_json(tracked_run):
    out, history, _, _ = tracked_run
    scalars = tracking.tensorboard_scalars(out)
    for column in ("train_loss", "train_acc", "val_loss", "val_acc", "images_per_s", "data_wait_fraction",
                   "epoch_time_s"):
        points = scalars[f"epoch/{column}"]
        assert [step for step, _ in points] == [e * STEPS for e in range(1, EPOCHS + 1)], column
        assert _values(points) == pytest.approx([row[column] for row in history], rel=1e-6), column


def test_tensorboard_steps_are_the_real_step_losses_and_lrs(tracked_run):
    out, history, _, _ = tracked_run
    scalars = tracking.tensorboard_scalars(out)
    losses, lrs = scalars["step/loss"], scalars["step/lr"]
    assert [step for step, _ in losses] == list(range(1, EPOCHS * STEPS + 1))  # once each, across the resume
    for epoch, row in enumerate(history, start=1):
        epoch_losses = _values(losses)[(epoch - 1) * STEPS:epoch * STEPS]
        assert sum(epoch_losses) / STEPS == pytest.approx(row["train_loss"], rel=1e-5)
        assert _values(lrs)[epoch * STEPS - 1] == pytest.approx(row["lr"], abs=1e-7)  # lr after the epoch's last step
    assert _values(lrs) == sorted(_values(lrs), reverse=True) and _values(lrs)[0] < 0.01  # cosine decay from --lr


def test_tensorboard_final_metrics_and_figures(tracked_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out, _, metrics, summary = tracked_run
    scalars = tracking.tensorboard_scalars(out)
    last = EPOCHS * STEPS
    for key in ("accuracy", "f1_macro", "precision_macro", "recall_macro"):
        assert scalars[f"test/{key}"] == [(last, pytest.approx(metrics[key], rel=1e-6))]
    assert scalars["summary/best_val_accuracy"] == [(last, pytest.approx(summary["best_val_accuracy"], rel=1e-6))]
    folder = next(d for d in tracking.tensorboard_dirs(out) if "figures/curves" in
                  EventAccumulator(str(d), size_guidance={"images": 0}).Reload().Tags()["images"])
    acc = EventAccumulator(str(folder), size_guidance={"images": 0}).Reload()
    for tag, png in (("figures/curves", "curves.png"), ("figures/confusion_matrix", "confusion_matrix.png")):
        (event,) = acc.Images(tag)
        with Image.open(out / png) as im:
            assert (event.width, event.height, event.step) == (im.width, im.height, last)


def test_tensorboard_hparams_are_the_config_without_none(tracked_run):
    out, _, _, summary = tracked_run
    hparams = tracking.tensorboard_hparams(out)
    args = summary["args"]
    assert None in args.values()  # e.g. drop_rate, splits: the case TensorBoard would reject
    effective = {"mixed_precision": summary["mixed_precision"]}  # what ran, not the None that meant "from accelerate"
    for key, value in {**args, **effective}.items():
        if value is None:
            assert key not in hparams
        elif isinstance(value, str):
            assert hparams[key] == value
        else:
            assert hparams[key] == pytest.approx(float(value)), key
    assert hparams["image_size"] == 32 and hparams["pretrained_source"] == "scratch"


# ----------------------------------------------------------------------------------------------------------------
# trackio (its local store, read with its own API)
# ----------------------------------------------------------------------------------------------------------------
def test_trackio_store_equals_history_json(tracked_run, trackio_dir):
    import trackio
    from trackio.sqlite_storage import SQLiteStorage

    out, history, metrics, summary = tracked_run
    assert Path(trackio.utils.TRACKIO_DIR) == trackio_dir  # hermetic: the session's store, not ~/.cache
    (run,) = [r for r in trackio.Api().runs(PROJECT) if r.name == out.name]  # resumed: the same run, continued
    assert run.config["lr"] == pytest.approx(summary["args"]["lr"]) and run.config["model"] == "animals_cnn5"
    assert not any(v is None for k, v in run.config.items() if not k.startswith("_"))
    for column in ("train_loss", "val_loss", "val_acc"):
        rows = SQLiteStorage.get_metric_values(PROJECT, out.name, f"epoch/{column}")
        assert [r["step"] for r in rows] == [e * STEPS for e in range(1, EPOCHS + 1)]
        assert [r["value"] for r in rows] == pytest.approx([row[column] for row in history], rel=1e-6), column
    assert len(SQLiteStorage.get_metric_values(PROJECT, out.name, "step/loss")) == EPOCHS * STEPS
    (accuracy,) = SQLiteStorage.get_metric_values(PROJECT, out.name, "test/accuracy")
    assert accuracy["value"] == pytest.approx(metrics["accuracy"])
    (image,) = SQLiteStorage.get_metric_values(PROJECT, out.name, "figures/confusion_matrix")
    assert image["value"]["_type"] == "trackio.image"
    with Image.open(trackio_dir / "media" / image["value"]["file_path"]) as im, \
            Image.open(out / "confusion_matrix.png") as ref:
        assert im.size == ref.size


def test_study_logs_every_run_into_one_project_named_by_run(sample_dir, cache_dir, tmp_path):
    trackio = pytest.importorskip("trackio")
    cfg = study.StudyConfig(data_dir=str(sample_dir), output_dir=str(tmp_path / "tracked_study"), train_per_class=6,
                            val_per_class=3, test_per_class=3, epochs=1, sweep_epochs=1, sweep_lrs=(0.01,),
                            sweep_batch_sizes=(16,), image_size=32, families=("scratch",), cache_dir=str(cache_dir),
                            progress=False, report_to="trackio,tensorboard")
    study.run_study(cfg)
    names = {spec.name for spec in study.sweep_specs(cfg)} | {spec.name for spec in study.final_specs(cfg, 0.01, 16)}
    assert len(names) == 2
    assert {r.name for r in trackio.Api().runs("tracked_study")} == names
    for name in names:
        run_dir = tmp_path / "tracked_study" / "runs" / name
        history = json.loads((run_dir / "history.json").read_text())
        assert _values(tracking.tensorboard_scalars(run_dir)["epoch/val_acc"]) == pytest.approx(
            [row["val_acc"] for row in history])
        assert tracking.tensorboard_dirs(run_dir)[0].name == "tracked_study"  # RUN/tb/<study project>


# ----------------------------------------------------------------------------------------------------------------
# Choosing trackers, and the errors
# ----------------------------------------------------------------------------------------------------------------
def test_hparams_are_flat_scalars_without_none():
    flat = tracking.flat_hparams({"lr": 0.1, "drop": None, "aug": True, "sizes": (16, 32), "path": Path("/d"),
                                  "sched": {"name": "cosine", "warmup": None, "min": 0.0}})
    assert flat == {"lr": 0.1, "aug": True, "sizes": "[16, 32]", "path": "/d", "sched.name": "cosine",
                    "sched.min": 0.0}


def test_default_is_tensorboard_when_installed_and_never_fails(monkeypatch):
    installed = {"tensorboard": True, "trackio": True, "wandb": False, "mlflow": False}
    monkeypatch.setattr(tracking, "is_installed", lambda name: installed[name])
    assert tracking.resolve_trackers(None) == ["tensorboard"]
    assert tracking.resolve_trackers("all") == ["tensorboard", "trackio"]
    assert tracking.resolve_trackers("none") == [] and tracking.accelerator_kwargs("none", "/x") == {}
    installed["tensorboard"] = False
    assert tracking.resolve_trackers(None) == []  # the default quietly turns tracking off; it never fails
    with pytest.raises(UserError, match=r"tensorboard not installed \(pip install tensorboard\)"):
        tracking.resolve_trackers("tensorboard")


@pytest.mark.parametrize("report_to, message", [
    ("tensorbord", "unknown --report-to tensorbord; choose from none, tensorboard, trackio, wandb, mlflow, all"),
    ("none,trackio", "'none' and 'all' cannot be combined"),
    ("mlflow", "mlflow not installed (pip install mlflow)"),
])
def test_bad_or_missing_tracker_is_one_line_exit_2_and_no_folder(report_to, message, monkeypatch, capsys,
                                                                  sample_dir, tmp_path):
    monkeypatch.setattr(tracking, "is_installed", lambda name: name != "mlflow")
    spec = importlib.util.spec_from_file_location("train_script", ROOT / "scripts" / "train.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    out = tmp_path / "run"
    assert run_main(script.main, ["--data-dir", str(sample_dir), "--output-dir", str(out), "--model",
                                  "animals_cnn5", "--report-to", report_to]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and err.count("\n") == 1
    assert not out.exists()
