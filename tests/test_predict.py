"""Predict a folder into a Kaggle submission: same numbers as evaluation, numeric id order, sample-submission order."""
from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from hf_animals import predict
from hf_animals.data import ENGLISH_TO_ITALIAN
from hf_animals.errors import UserError

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def run_dir(tiny_run) -> Path:
    return tiny_run


@pytest.fixture(scope="module")
def test_split(run_dir, sample_dir, tmp_path_factory) -> tuple[Path, dict[str, str]]:
    """The run's test images as a Kaggle test folder (1.jpg ... N.png, some in a sub-folder) and their true labels."""
    rows = [r for r in csv.DictReader(open(run_dir / "splits.csv")) if r["split"] == "test"]
    folder = tmp_path_factory.mktemp("kaggle_test")
    (folder / "part2").mkdir()
    truth = {}
    for i, row in enumerate(rows, start=1):
        src = sample_dir / row["path"]
        shutil.copy(src, folder / ("part2" if i % 4 == 0 else "") / f"{i}{src.suffix}")
        truth[str(i)] = row["label"]
    return folder, truth


@pytest.fixture(scope="module")
def predictor(run_dir):
    return predict.load_predictor(run_dir, device="cpu", batch_size=16)


def read_csv(path: Path) -> list[list[str]]:
    with open(path, newline="") as fh:
        return list(csv.reader(fh))


def test_natural_order():
    names = ["10.jpg", "2.jpg", "1.png", "b/3.jpg", "a10", "a9"]
    assert sorted(names, key=predict.natural_key) == ["1.png", "2.jpg", "10.jpg", "a9", "a10", "b/3.jpg"]


def test_predict_on_test_split_reproduces_metrics_accuracy(run_dir, predictor, test_split, tmp_path):
    folder, truth = test_split
    metrics = json.loads((run_dir / "metrics.json").read_text())
    result = predict.predict_to_csv(run_dir, folder, tmp_path / "sub.csv", label_language="en", device="cpu",
                                    batch_size=16)
    rows = read_csv(result.output)
    assert rows[0] == ["ID", "Label"] and len(rows) - 1 == metrics["num_samples"] == len(truth)
    correct = sum(label == truth[key] for key, label in rows[1:])
    assert correct / len(truth) == pytest.approx(metrics["accuracy"], abs=1e-9)


def test_default_kaggle_format(predictor, test_split, tmp_path):
    folder, truth = test_split
    prediction = predict.predict_folder(predictor, folder)
    submission = predict.make_submission(prediction)  # defaults: ID,Label, the class folder names, numeric id order
    assert submission.header == ["ID", "Label"]
    assert [r[0] for r in submission.rows] == [str(i) for i in range(1, len(truth) + 1)]
    assert {r[1] for r in submission.rows} <= set(predictor.class_names)  # the sample's folders are English
    italian = predict.make_submission(prediction, label_language="it")
    assert [ENGLISH_TO_ITALIAN[r[1]] for r in submission.rows] == [r[1] for r in italian.rows]
    with_probs = predict.make_submission(prediction, label_language="index", id_column="id", label_column="label",
                                         probabilities=True)
    assert with_probs.header == ["id", "label"] + [f"prob_{i}" for i in range(10)]
    for row in with_probs.rows:
        probs = [float(p) for p in row[2:]]
        assert sum(probs) == pytest.approx(1, abs=1e-4) and max(range(10), key=probs.__getitem__) == int(row[1])


def test_non_images_ignored_and_unreadable_reported(predictor, test_split, tmp_path):
    folder = tmp_path / "imgs"
    shutil.copytree(test_split[0], folder)
    (folder / "notes.txt").write_text("not an image")
    (folder / "41.jpg").write_bytes(b"broken")
    prediction = predict.predict_folder(predictor, folder)
    assert [p.name for p in prediction.ignored] == ["notes.txt"]
    assert [p.name for p, _ in prediction.unreadable] == ["41.jpg"]
    assert "cannot read image" in prediction.unreadable[0][1]
    assert len(prediction.paths) == len(test_split[1])
    assert "41" not in [r[0] for r in predict.make_submission(prediction).rows]


def test_sample_submission_header_and_order_are_copied(predictor, test_split, tmp_path):
    folder, _ = test_split
    names = sorted((p.name for p in folder.rglob("*.*")), key=lambda n: -int(n.split(".")[0]))  # reversed order
    sample = tmp_path / "sample.csv"
    sample.write_text("Id,Category\n" + "".join(f"{n},cane\n" for n in names))
    prediction = predict.predict_folder(predictor, folder)
    submission = predict.make_submission(prediction, sample_submission=sample)
    assert submission.header == ["Id", "Category"] and submission.id_from == "name"
    assert [r[0] for r in submission.rows] == names
    by_stem = {r[0]: r[1] for r in predict.make_submission(prediction).rows}
    assert all(label == by_stem[name.split(".")[0]] for name, label in submission.rows)

    sample.write_text("Id,Category\n" + "".join(f"{n},cane\n" for n in names[1:]) + "999.jpg,cane\n")
    with pytest.raises(UserError, match=r"1 id\(s\) of .* have no image .*999.jpg"):
        predict.make_submission(prediction, sample_submission=sample)
    sample.write_text("Id,Category\n" + "".join(f"{n},cane\n" for n in names[1:]))
    with pytest.raises(UserError, match=rf"1 image\(s\) in .* have no row .*{names[0]}"):
        predict.make_submission(prediction, sample_submission=sample)


def test_script_end_to_end_and_errors(run_dir, test_split, tmp_path):
    folder, truth = test_split
    out = tmp_path / "submission.csv"
    proc = subprocess.run([sys.executable, "scripts/predict.py", "--model", str(run_dir), "--images", str(folder),
                           "--output", str(out), "--device", "cpu"], cwd=ROOT, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert f"{len(truth)} images predicted" in proc.stdout and "columns ID,Label" in proc.stdout
    assert len(read_csv(out)) == len(truth) + 1

    proc = subprocess.run([sys.executable, "scripts/predict.py", "--model", "hf-hub:nobody/not-cached",
                           "--images", str(folder)], cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert proc.returncode == 2 and proc.stderr.startswith("error: ") and "Traceback" not in proc.stderr


def test_italian_labels_need_animals10_classes(predictor):
    with pytest.raises(UserError, match="--label-language en"):
        predict.output_labels(["dog", "zebra"], "it")
    assert predict.output_labels(predictor.class_names, "it")[predictor.class_names.index("dog")] == "cane"


# ------------------------------------------------------------------------------------------------ label language

@pytest.fixture(scope="module")
def italian_run(tmp_path_factory, cache_dir) -> Path:
    """A 1-epoch scratch CNN trained on Animals-10's own (Italian) folder names."""
    from hf_animals import training
    from hf_animals.sample_data import write_sample_dataset

    base = tmp_path_factory.mktemp("italian")
    data_dir = write_sample_dataset(base / "animals10", classes=3, per_class=8, size=40, seed=1, italian=True)
    out = base / "run"
    training.train(training.TrainConfig(
        model="animals_cnn5", data_dir=str(data_dir), output_dir=str(out), epochs=1, batch_size=8, image_size=32,
        train_per_class=4, val_per_class=2, test_per_class=2, progress=False, cache_dir=str(cache_dir)))
    return out


def test_default_labels_are_the_training_folder_names(italian_run, run_dir, test_split, tmp_path):
    """Italian folders give Italian labels, English folders English ones; --label-language still translates."""
    folder, _ = test_split
    italian = predict.load_predictor(italian_run, device="cpu")
    assert italian.class_names == ["dog", "elephant", "horse"]  # English label names, sorted: the label index
    assert italian.label_folders == ["cane", "elefante", "cavallo"]  # the folders on disk, in that order
    it_rows = predict.predict_to_csv(italian_run, folder, tmp_path / "it.csv", device="cpu").submission.rows
    en_rows = predict.predict_to_csv(italian_run, folder, tmp_path / "en.csv", label_language="en",
                                     device="cpu").submission.rows
    assert {r[1] for r in it_rows} <= {"cane", "elefante", "cavallo"}
    assert [ENGLISH_TO_ITALIAN[e[1]] for e in en_rows] == [i[1] for i in it_rows]
    english = predict.predict_to_csv(run_dir, folder, tmp_path / "default.csv", device="cpu").submission.rows
    assert {r[1] for r in english} <= set(ENGLISH_TO_ITALIAN)


def test_classes_outside_animals10_are_predicted_under_their_folder_names(tmp_path, test_split):
    from hf_animals.models import create_model, save_model
    from hf_animals.preprocess import Preprocessing

    model = create_model("animals_cnn5", 2, widths=(8, 8, 8, 8, 8))
    save_model(model, tmp_path / "clothes", ["shirt", "Shoes"], Preprocessing(32, (0.5,) * 3, (0.25,) * 3),
               label_folders=["shirt", "Shoes"])
    result = predict.predict_to_csv(tmp_path / "clothes", test_split[0], tmp_path / "c.csv", device="cpu")
    assert {r[1] for r in result.submission.rows} <= {"shirt", "Shoes"} and result.submission.rows
    with pytest.raises(UserError, match="no Animals-10"):
        predict.predict_to_csv(tmp_path / "clothes", test_split[0], tmp_path / "c.csv", label_language="it")


# ------------------------------------------------------------------------------------------------ plain timm

def test_plain_timm_pipeline_agrees_with_predict_on_non_square_photos(run_dir, predictor, tmp_path):
    """The saved model's own pretrained_cfg drives timm's transform: same top-1 and probabilities as predict.py."""
    import numpy as np
    import timm
    import torch
    from PIL import Image

    rng = np.random.default_rng(3)
    paths = []
    for i, (w, h) in enumerate([(80, 50), (50, 80), (80, 50), (120, 45), (47, 90), (80, 50)]):
        pixels = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        pixels[: h // 2, :, i % 3] = 255  # some structure, so the classes are not all equally likely
        path = tmp_path / f"photo{i}.jpg"
        Image.fromarray(pixels).save(path, quality=90)
        paths.append(path)

    model = timm.create_model(f"local-dir:{run_dir}", pretrained=True).eval()
    transform = timm.data.create_transform(**timm.data.resolve_data_config({}, model=model))
    with torch.no_grad():
        batch = torch.stack([transform(Image.open(p).convert("RGB")) for p in paths])
        timm_probs = model(batch).softmax(1)
    ours = predictor.predict_paths(paths)
    assert batch.shape[-2:] == (predictor.image_size, predictor.image_size) == (32, 32)
    assert timm_probs.argmax(1).tolist() == ours.argmax(1).tolist()
    assert torch.allclose(timm_probs, ours, atol=1e-3), (timm_probs - ours).abs().max()


def test_a_corrupt_model_file_is_one_error_line(run_dir, test_split, tmp_path):
    model = Path(shutil.copytree(run_dir, tmp_path / "run"))
    weights = model / "model.safetensors"
    weights.write_bytes(b"\x00" * 64)
    proc = subprocess.run([sys.executable, "scripts/predict.py", "--model", str(model), "--images",
                           str(test_split[0]), "--output", str(tmp_path / "s.csv"), "--device", "cpu"], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr and not (tmp_path / "s.csv").exists()
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and str(weights.resolve()) in lines[0]
