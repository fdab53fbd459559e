"""The benchmark in a tiny configuration: it runs end to end, writes the documented JSON, and its figures add up."""
from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from hf_animals import benchmark, catalogue
from hf_animals import study as hfstudy
from hf_animals.errors import UserError

ROOT = Path(__file__).resolve().parents[1]
REGIME_KEYS = {"naive_epoch_s", "epoch_s", "speedup", "cache_s", "data_wait_fraction", "val_acc_naive", "val_acc"}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """Scratch CNN (full forward, augmentation probe) + ResNet-18 head (feature cache), 32 px, 2 epochs, via the CLI."""
    work = tmp_path_factory.mktemp("bench")
    out = work / "bench.json"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "benchmark.py"), "--work-dir", str(work / "w"), "--per-class", "4",
         "--val-per-class", "2", "--source-size", "40", "--image-size", "32", "--epochs", "2", "--batch-size", "16",
         "--regimes", "animals_cnn5:all", "resnet18:fc", "--augment-batches", "1", "--threads", "1", "--quiet",
         "--mixed-precision", "no",  # both sides fp32, so the pipelines' agreement is checked at fp32's tolerance
         "--json", str(out)],
        capture_output=True, text=True, timeout=300, env={**_env(), "HF_HUB_OFFLINE": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(out.read_text()), proc.stdout


def _env() -> dict:
    import os

    return dict(os.environ)


def test_json_has_the_documented_schema(tiny):
    result, _ = tiny
    assert isinstance(result["device"], str) and result["device"]
    assert set(result["regimes"]) == {"animals_cnn5:all", "resnet18:fc"}
    for name, row in result["regimes"].items():
        assert REGIME_KEYS <= set(row), (name, REGIME_KEYS - set(row))
        for key in REGIME_KEYS:
            assert isinstance(row[key], (int, float)) and math.isfinite(row[key]), (name, key)
        assert row["naive_epoch_s"] > 0 and row["epoch_s"] > 0 and row["cache_s"] > 0
        assert 0 <= row["data_wait_fraction"] <= 1
        assert row["mixed_precision"] == {"naive": "no", "hf_animals": "no"}
        assert row["channels_last"] == {"naive": False, "hf_animals": True}  # the newcomer's default layout


def test_both_pipelines_reach_the_same_accuracy(tiny):
    result, _ = tiny
    n_val = result["config"]["counts"]["val"]
    for name, row in result["regimes"].items():
        assert row["agree"], name
        assert abs(row["val_acc"] - row["val_acc_naive"]) <= 1 / n_val + 1e-9, name
        assert row["loss_max_rel_diff"] <= 1e-3, name


def test_feature_cache_and_augmentation_probe_follow_the_regime(tiny):
    result, _ = tiny
    # The frozen-prefix cache is used for the head-only regime, never for full training.
    assert result["regimes"]["resnet18:fc"]["feature_cache"] is True
    assert result["regimes"]["animals_cnn5:all"]["feature_cache"] is False
    # The study augments the scratch CNN (catalogue.PROTOCOL), not the ResNet head: only the former is probed.
    assert "hf_animals_augment" in result["regimes"]["animals_cnn5:all"]["per_image_s"]
    assert "data_wait_fraction_augment" not in result["regimes"]["resnet18:fc"]
    assert "resnet18:all" in result["study"]["missing"]  # not benchmarked here: left out of the projection, said so


def test_weights_are_labelled_from_the_run_record(tiny):
    """ImageNet weights when the Hub cache has them, else (offline) random init recorded as the offline fallback
    and marked in the table: never random weights passed off as pretrained."""
    result, stdout = tiny
    runs = Path(result["config"]["work_dir"]) / "runs"
    run = json.loads((runs / "resnet18__fc" / "hf_animals" / "run.json").read_text())
    source = catalogue.weight_source(run["pretrained_source"], "resnet18")
    assert source.kind in ("hub", "offline")
    assert result["regimes"]["resnet18:fc"]["weights"] == source.label
    assert ("resnet18:fc *" in stdout) == (source.kind == "offline")
    assert result["regimes"]["animals_cnn5:all"]["weights"] == "scratch"


def _row(**per_image) -> dict:
    costs = {"train": 1e-3, "val": 5e-4}
    return {"feature_cache_s": 0.1, "per_image_s": {"naive": per_image.get("naive", costs),
                                                     "hf_animals": per_image.get("hf_animals", costs),
                                                     "hf_animals_augment": per_image.get("augment", costs)}}


def test_projection_charges_each_regime_the_pipeline_the_study_uses():
    study = hfstudy.StudyConfig(data_dir="", output_dir="", families=("scratch", "resnet18"))
    counts = {"train": 40, "val": 10, "test": 10}
    measured = {r.name: _row() for r in catalogue.PROTOCOL if r.family in study.families}

    def project(changes: dict) -> dict:
        regimes = {name: {**row, **changes.get(name, {})} for name, row in measured.items()}
        return benchmark.study_projection(regimes, counts, 1.0, study, n_classes=10)

    base = project({})
    assert base["runs"] == 3 + 1 + len(study.sweep_lrs) * len(study.sweep_batch_sizes) and not base["missing"]
    slow = {"train": 2e-3, "val": 1e-3}
    # resnet18:fc trains without augmentation on cached features: its plain cost counts, its probe would not.
    assert project({"resnet18:fc": _row(hf_animals=slow)})["hf_animals_s"] > base["hf_animals_s"]
    assert project({"resnet18:fc": _row(augment=slow)})["hf_animals_s"] == base["hf_animals_s"]
    # resnet18:all trains with augmentation: the probe's cost is what the study pays.
    assert project({"resnet18:all": _row(augment=slow)})["hf_animals_s"] > base["hf_animals_s"]
    assert project({"resnet18:all": _row(hf_animals=slow)})["hf_animals_s"] == base["hf_animals_s"]
    # The naive side does not depend on the hf_animals costs, and grows with its own.
    assert project({"resnet18:all": _row(naive=slow)})["naive_s"] > base["naive_s"]
    assert project({"resnet18:all": _row(augment=slow)})["naive_s"] == base["naive_s"]


def test_targets_follow_the_catalogue_regime():
    fast = {"speedup": 30.0, "speedup_30": 12.0, "data_wait_fraction": 0.01}
    slow = {"speedup": 1.5, "speedup_30": 1.2, "data_wait_fraction": 0.2}
    checks = benchmark.check_targets({"mobilenetv2_100:classifier": fast, "resnet18:layer3,layer4,fc": slow,
                                      "tf_efficientnet_lite0:all": {**fast, "data_wait_fraction_augment": 0.5}})
    by_regime = {}
    for check in checks:
        by_regime.setdefault(check["regime"], []).append((check["target"].split(" ")[0], check["met"]))
    assert by_regime["mobilenetv2_100:classifier"] == [("epoch", True), ("30-epoch", True)]  # head only
    assert by_regime["resnet18:layer3,layer4,fc"] == [("epoch", False)]  # part of the backbone
    assert by_regime["tf_efficientnet_lite0:all"] == [("data", True), ("data", False)]  # everything, + augmented


def test_report_prints_every_regime_and_the_targets(tiny):
    result, stdout = tiny
    for name in result["regimes"]:
        assert name in stdout
    assert "whole study" in stdout and "targets:" in stdout
    assert "resnet18:fc: epoch speedup >= 20" in stdout
    assert benchmark.format_report(result) in stdout


def test_unknown_regime_is_a_user_error():
    with pytest.raises(UserError, match="resnet18:fc"):
        benchmark.BenchmarkConfig(regimes=("resnet18:layer9",))


def test_default_regimes_cover_the_whole_protocol():
    """The projection misses no run of the study when the benchmark runs its defaults (issue 13)."""
    assert set(benchmark.BenchmarkConfig().regimes) == set(catalogue.REGIMES)
    row = {"per_image_s": {"naive": {"train": 0.1, "val": 0.05}, "hf_animals": {"train": 0.02, "val": 0.01},
                           "hf_animals_augment": {"train": 0.03, "val": 0.01}}, "feature_cache_s": 1.0}
    regimes = {name: row for name in benchmark.BenchmarkConfig().regimes}
    study = benchmark.study_projection(regimes, {"train": 40, "val": 10, "test": 10}, 2.0,
                                       hfstudy.StudyConfig(data_dir="", output_dir=""), n_classes=10)
    assert study["missing"] == [] and study["speedup"] > 1


def test_small_images_are_timed_as_photo_sized_jpegs(tmp_path):
    """A folder of thumbnails would make decoding look free: the benchmark times photo-sized JPEG copies instead,
    one per split image, in the same class folders, and says so."""
    from PIL import Image

    from hf_animals import data as hfdata

    src = tmp_path / "small"
    for k, c in enumerate(("cat", "dog")):
        (src / c).mkdir(parents=True)
        for i in range(5):
            Image.new("L", (28, 20), color=100 * k + 20 * i).save(src / c / f"{i}.png")
    manifest = hfdata.prepare_splits(src, tmp_path / "w", train=3, val=1, test=1, seed=0, reuse=False)
    assert benchmark.median_short_side(src, manifest) == 20
    out = benchmark.photo_sized_copy(src, manifest, tmp_path / "photo", 300)
    copies = sorted(out.rglob("*"))
    files = [p for p in copies if p.is_file()]
    assert len(files) == 10 and {p.parent.name for p in files} == {"cat", "dog"}
    for p in files:
        with Image.open(p) as im:
            assert im.format == "JPEG" and im.mode == "RGB" and min(im.size) == 300 and im.size == (420, 300)
    again = hfdata.prepare_splits(out, tmp_path / "w2", train=3, val=1, test=1, seed=0, reuse=False)
    assert len(hfdata.read_manifest(again, out)) == 10
    line = benchmark._source_line({"data_dir": str(src), "median_short_side": 20, "photo_copy": True}, 300)
    assert "much smaller than photos" in line and "300 px JPEG" in line
