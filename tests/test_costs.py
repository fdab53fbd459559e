"""Cost measurements on real runs: a run's own peak memory, adaptive latency with its spread, one-time cache costs."""
from __future__ import annotations

import csv
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from hf_animals import costs, models, study, training
from hf_animals.errors import UserError

ROOT = Path(__file__).resolve().parents[1]


def tiny_cnn(sample_dir, out, cache_dir) -> training.TrainConfig:
    return training.TrainConfig(model="animals_cnn5", data_dir=str(sample_dir), output_dir=str(out), epochs=1,
                                batch_size=16, image_size=32, train_per_class=8, val_per_class=4, test_per_class=4,
                                progress=False, cache_dir=str(cache_dir))


@pytest.fixture(scope="module")
def tiny_then_study_then_tiny(sample_dir, cache_dir, tmp_path_factory):
    """In one process: a tiny run, a study of bigger runs (EfficientNet-Lite0 head-only and full fine-tuning at
    64 px, batch 64), then the very same tiny run again - as it would run late in a study."""
    root = tmp_path_factory.mktemp("costs")
    alone = training.train(tiny_cnn(sample_dir, root / "tiny_alone", cache_dir))
    cfg = study.StudyConfig.quick(data_dir=str(sample_dir), output_dir=str(root / "study"), train_per_class=8,
                                  val_per_class=4, test_per_class=4, epochs=1, image_size=64, batch_size=64,
                                  families=("efficientnet_lite0",), cache_dir=str(cache_dir), progress=False)
    study.run_study(cfg)
    later = training.train(tiny_cnn(sample_dir, root / "tiny_later", cache_dir))
    return alone, root / "study", later


def test_peak_memory_is_the_runs_own_alone_or_after_bigger_runs(tiny_then_study_then_tiny):
    alone, study_dir, later = tiny_then_study_then_tiny
    full = json.loads((study_dir / "runs" / "tf_efficientnet_lite0__all" / "run.json").read_text())
    # The premise: a process-lifetime peak (ru_maxrss) would hand the full fine-tuning's peak to the later run.
    assert full["peak_memory_mb"] > 1.15 * alone["peak_memory_mb"], (full["peak_memory_mb"], alone["peak_memory_mb"])
    assert later["peak_memory_mb"] == pytest.approx(alone["peak_memory_mb"], rel=0.15)
    assert later["peak_memory_mb"] < full["peak_memory_mb"]
    for run in (alone, later, full):
        assert run["peak_memory_mb"] >= run["rss_at_start_mb"] > 0 and run["peak_memory_method"]


@pytest.mark.parametrize("kernel_peak", [True, False], ids=["kernel-high-water-mark", "sampling-thread"])
def test_peak_memory_forgets_what_came_before(kernel_peak, monkeypatch):
    if not kernel_peak:  # as where /proc/self/clear_refs cannot be written
        monkeypatch.setattr(costs, "_reset_kernel_rss_peak", lambda: False)
    first = costs.PeakMemory("cpu")
    big = torch.ones(64 * 2**20)  # 256 MB, touched
    time.sleep(0.2)  # lets the sampling thread see it (not a timing assertion)
    del big
    earlier = first.stop()
    later = costs.PeakMemory("cpu").stop()
    assert earlier["peak_memory_mb"] >= earlier["rss_at_start_mb"] + 200
    assert later["peak_memory_mb"] < earlier["peak_memory_mb"] - 150
    assert ("sampled" in later["peak_memory_method"]) != kernel_peak


def test_comparison_shows_one_time_and_total_cost(tiny_then_study_then_tiny):
    _, study_dir, _ = tiny_then_study_then_tiny
    with open(study_dir / "comparison.csv", newline="") as fh:
        rows = {r["run"]: r for r in csv.DictReader(fh)}
    for column in (*costs.TIME_COLUMNS, *costs.LATENCY_COLUMNS):
        assert column in study.COMPARISON_COLUMNS and all(r[column] != "" for r in rows.values()), column
    head = rows["tf_efficientnet_lite0__classifier"]
    # A head-only run trains on frozen features computed once: that pass is part of its cost.
    run = json.loads((study_dir / "runs" / "tf_efficientnet_lite0__classifier" / "run.json").read_text())
    assert run["feature_cache_s"] > 0
    assert float(head["cache_s"]) == pytest.approx(run["image_cache_s"] + run["feature_cache_s"])
    assert float(head["total_s"]) >= float(head["cache_s"]) > 0
    assert float(head["total_s"]) == pytest.approx(float(head["cache_s"]) + float(head["train_time_s"]))
    header = (study_dir / "comparison.md").read_text().splitlines()[0]
    assert "| cache s |" in header and "| total s |" in header and "| threads |" in header


def test_run_records_latency_median_and_spread_at_batch_1_and_32(tiny_then_study_then_tiny):
    alone, _, _ = tiny_then_study_then_tiny
    latency = alone["latency"]
    assert alone["latency_ms_per_image"] == latency["batch_1"]["median_ms"]
    for bs in costs.LATENCY_BATCH_SIZES:
        entry = latency[f"batch_{bs}"]
        # timed on one CPU thread (per-core figures), the count recorded with the result
        assert entry["batch_size"] == bs and entry["threads"] == latency["threads"] == costs.CPU_LATENCY_THREADS
        assert entry["min_ms"] <= entry["median_ms"] <= entry["max_ms"] and entry["iqr_ms"] >= 0
        assert entry["repeats"] > 3


def test_latency_repeats_adaptively_with_torch_benchmark(monkeypatch):
    from torch.utils.benchmark import Timer

    calls = []
    original = Timer.adaptive_autorange

    def spy(self, *args, **kwargs):
        calls.append(kwargs)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(Timer, "adaptive_autorange", spy)
    model = models.create_model("animals_cnn5", num_classes=3, pretrained=False)
    pixels = torch.rand(5, 3, 32, 32)
    result = costs.measure_latency(model, pixels, "cpu", min_run_time=0.05)
    assert len(calls) == len(costs.LATENCY_BATCH_SIZES)
    threads = torch.get_num_threads()
    assert result["threads"] == costs.CPU_LATENCY_THREADS and torch.get_num_threads() == threads  # restored
    b1, b32 = result["batch_1"], result["batch_32"]
    assert b1["threads"] == b32["threads"] == costs.CPU_LATENCY_THREADS
    assert b32["batch_size"] == 32 and b32["ms_per_image"] == pytest.approx(b32["median_ms"] / 32)
    assert result["ms_per_image"] == b1["median_ms"]
    for entry in (b1, b32):
        assert entry["repeats"] > 3 and entry["calls_per_repeat"] >= 1
        assert entry["min_ms"] <= entry["median_ms"] <= entry["max_ms"]
        assert entry["method"] == costs.LATENCY_METHOD


def test_a_slow_call_still_gets_enough_repeats_for_a_spread():
    class Slow(torch.nn.Module):
        def forward(self, x):
            time.sleep(0.05)
            return x

    # A 0.1 s budget would fit two 50 ms calls; the budget grows to fit the minimum number of repeats.
    entry = costs.time_forward(Slow(), torch.zeros(1), min_run_time=0.01, max_run_time=0.1, min_repeats=4)
    assert entry["repeats"] >= 4 and entry["calls_per_repeat"] == 1


def test_batch_of_repeats_real_images_when_the_split_is_small():
    pixels = torch.arange(3).view(3, 1, 1, 1).expand(3, 3, 2, 2)
    batch = costs.batch_of(pixels, 32)
    assert batch.shape == (32, 3, 2, 2)
    assert batch[:, 0, 0, 0].tolist() == [i % 3 for i in range(32)]


def test_cost_totals_add_the_one_time_caches_to_training():
    totals = costs.cost_totals(image_cache_s=1.5, feature_cache_s=2.0, train_time_s=0.5)
    assert totals == {"image_cache_s": 1.5, "feature_cache_s": 2.0, "cache_s": 3.5, "total_s": 4.0}


def test_latency_check_groups_runs_of_one_model_and_size(tiny_then_study_then_tiny, capsys):
    _, study_dir, _ = tiny_then_study_then_tiny
    groups = costs.latency_groups(study_dir)
    assert [(g["model"], g["image_size"], len(g["runs"])) for g in groups] == [("tf_efficientnet_lite0", 64, 2)]
    assert groups[0]["b1_ratio"] >= 1 and groups[0]["b32_ratio"] >= 1
    done = subprocess.run([sys.executable, str(ROOT / "scripts" / "latency_check.py"), "--study", str(study_dir)],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "tf_efficientnet_lite0__classifier" in done.stdout and "max/min" in done.stdout


def test_latency_check_on_a_folder_without_runs_is_a_clear_error(tmp_path):
    with pytest.raises(UserError, match="not a study folder"):
        costs.latency_groups(tmp_path)
    done = subprocess.run([sys.executable, str(ROOT / "scripts" / "latency_check.py"), "--study", str(tmp_path)],
                          capture_output=True, text=True)
    assert done.returncode == 2 and done.stderr.startswith("error: ")
