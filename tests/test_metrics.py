"""Metrics: the offline evaluate module and compute_metrics, checked against hand-computed values."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings

import numpy as np
import pytest

from hf_animals import metrics as hfmetrics

# 3 classes, 10 samples. Confusion matrix (rows true, columns predicted):
#   [[3, 1, 0],     support   = [4, 2, 4]   predicted = [5, 3, 2]   true positives = [3, 1, 2]
#    [1, 1, 0],     precision = [3/5, 1/3, 2/2]   recall = [3/4, 1/2, 2/4]
#    [1, 1, 2]]     F1 = 2TP / (predicted + support) = [6/9, 2/5, 4/6]
REFERENCES = [0, 0, 0, 0, 1, 1, 2, 2, 2, 2]
PREDICTIONS = [0, 0, 0, 1, 1, 0, 2, 2, 0, 1]
NAMES = ["cat", "dog", "horse"]


def test_compute_metrics_matches_hand_computed_values():
    m = hfmetrics.compute_metrics(PREDICTIONS, REFERENCES, NAMES)
    assert m["confusion_matrix"] == [[3, 1, 0], [1, 1, 0], [1, 1, 2]]
    assert m["accuracy"] == pytest.approx(0.6)
    assert m["precision_macro"] == pytest.approx((3 / 5 + 1 / 3 + 1) / 3)
    assert m["recall_macro"] == pytest.approx((3 / 4 + 1 / 2 + 2 / 4) / 3)
    assert m["f1_macro"] == pytest.approx((6 / 9 + 2 / 5 + 4 / 6) / 3)
    assert list(m["per_class"]) == NAMES
    assert m["per_class"]["cat"] == pytest.approx({"precision": 3 / 5, "recall": 3 / 4, "f1": 6 / 9, "support": 4})
    assert m["per_class"]["dog"] == pytest.approx({"precision": 1 / 3, "recall": 1 / 2, "f1": 2 / 5, "support": 2})
    assert m["per_class"]["horse"] == pytest.approx({"precision": 1.0, "recall": 1 / 2, "f1": 4 / 6, "support": 4})
    assert m["class_names"] == NAMES
    assert m["num_samples"] == 10


def test_metrics_json_layout_and_plain_python_types():
    m = hfmetrics.compute_metrics(np.array(PREDICTIONS), np.array(REFERENCES), NAMES)
    for key in ("accuracy", "precision_macro", "recall_macro", "f1_macro", "per_class", "confusion_matrix"):
        assert key in m
    assert json.loads(json.dumps(m, allow_nan=False)) == m  # no numpy scalars, no NaN
    assert all(type(v) is int for row in m["confusion_matrix"] for v in row)
    assert type(m["per_class"]["cat"]["support"]) is int and type(m["accuracy"]) is float


def test_zero_division_and_labels_that_never_occur():
    # class 2 (bird) is never predicted; class 3 (fish) occurs in neither list.
    names = ["ant", "bee", "bird", "fish"]
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # no "invalid value in divide" from numpy
        m = hfmetrics.compute_metrics([0, 1, 1, 1], [0, 0, 1, 2], names)
    assert m["confusion_matrix"] == [[1, 1, 0, 0], [0, 1, 0, 0], [0, 1, 0, 0], [0, 0, 0, 0]]
    assert m["accuracy"] == pytest.approx(0.5)
    assert m["per_class"]["bird"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 1}
    assert m["per_class"]["fish"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0}
    assert m["per_class"]["bee"] == pytest.approx({"precision": 1 / 3, "recall": 1.0, "f1": 0.5, "support": 1})
    # Macro averages over the classes seen in references or predictions (ant, bee, bird), like scikit-learn.
    assert m["precision_macro"] == pytest.approx((1 + 1 / 3 + 0) / 3)
    assert m["recall_macro"] == pytest.approx((0.5 + 1 + 0) / 3)
    assert m["f1_macro"] == pytest.approx((2 / 3 + 0.5 + 0) / 3)
    json.dumps(m, allow_nan=False)


def test_perfect_predictions():
    m = hfmetrics.compute_metrics([2, 0, 1, 1], [2, 0, 1, 1], NAMES)
    assert m["accuracy"] == m["precision_macro"] == m["recall_macro"] == m["f1_macro"] == 1.0
    assert m["confusion_matrix"] == [[1, 0, 0], [0, 2, 0], [0, 0, 1]]


@pytest.mark.parametrize(
    "predictions, references, match",
    [([0, 1], [0], "2 predictions but 1 references"), ([], [], "at least one"), ([0, 3], [0, 1], r"\[0, 3\)")],
)
def test_bad_inputs_raise(predictions, references, match):
    with pytest.raises(ValueError, match=match):
        hfmetrics.compute_metrics(predictions, references, NAMES)


def test_metric_module_is_loaded_once(monkeypatch):
    import evaluate

    calls = []
    real_load = evaluate.load
    monkeypatch.setattr(evaluate, "load", lambda *a, **k: calls.append(a) or real_load(*a, **k))
    hfmetrics.load_classification_report.cache_clear()
    try:
        hfmetrics.compute_metrics(PREDICTIONS, REFERENCES, NAMES)
        hfmetrics.compute_metrics(REFERENCES, REFERENCES, NAMES)
        assert len(calls) == 1
        assert isinstance(hfmetrics.load_classification_report(), evaluate.EvaluationModule)
    finally:
        hfmetrics.load_classification_report.cache_clear()


def test_module_direct_compute_options():
    module = hfmetrics.load_classification_report()
    out = module.compute(predictions=[0, 1, 1], references=[0, 1, 0])  # num_classes inferred: 2
    assert out["confusion_matrix"] == [[1, 1], [0, 1]]
    out = module.compute(predictions=[0, 0], references=[0, 1], num_classes=3, zero_division=1.0)
    assert out["precision"] == [0.5, 1.0, 1.0]  # class 1 never predicted, class 2 unseen: 0/0 -> zero_division
    assert out["recall"] == [1.0, 0.0, 1.0]


def test_metric_script_imports_are_what_evaluate_can_copy():
    """evaluate parses the script's import lines: only installed libraries, nothing relative (hf_animals)."""
    from evaluate.loading import get_imports

    script = hfmetrics.METRIC_MODULE_DIR / "classification_report.py"
    imports = get_imports(str(script))
    assert {kind for kind, *_ in imports} == {"library"}
    assert {name for _, name, *_ in imports} == {"datasets", "evaluate", "numpy"}


def test_module_loads_by_path_offline_in_a_fresh_process(tmp_path):
    """No Hub, no previously cached copy: a fresh modules cache and HF_HUB_OFFLINE=1."""
    code = (
        "import evaluate, json, sys\n"
        "m = evaluate.load(sys.argv[1], keep_in_memory=True)\n"
        "print(json.dumps(m.compute(predictions=[0, 1, 1], references=[0, 1, 0], num_classes=2)))\n"
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
           "HF_MODULES_CACHE": str(tmp_path / "modules"), "HF_HOME": str(tmp_path / "hf_home")}
    result = subprocess.run([sys.executable, "-c", code, str(hfmetrics.METRIC_MODULE_DIR)], env=env,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout.strip().splitlines()[-1])
    assert out["accuracy"] == pytest.approx(2 / 3)
    assert out["confusion_matrix"] == [[1, 1], [0, 1]]


def test_format_classification_report():
    text = hfmetrics.format_classification_report(hfmetrics.compute_metrics(PREDICTIONS, REFERENCES, NAMES))
    lines = text.splitlines()
    assert lines[0].split() == ["precision", "recall", "f1-score", "support"]
    assert lines[1].split() == ["cat", "0.600", "0.750", "0.667", "4"]
    assert lines[-2].split() == ["accuracy", "0.600", "10"]
    assert lines[-1].split()[:2] == ["macro", "avg"]
