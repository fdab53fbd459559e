"""The Space folder (a runnable Gradio Space) and the split dataset (the exact split, file for file), offline."""
from __future__ import annotations

import csv
import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from hf_animals import data as hfdata
from hf_animals import hub_extras, predict
from hf_animals.errors import UserError

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_space_folder_is_a_gradio_space_that_serves_the_model(tiny_run, tmp_path):
    from gradio_client import Client, handle_file
    from huggingface_hub import SpaceCard

    result = hub_extras.push_space("someone/animals-demo", "someone/animals-cnn", dry_run=tmp_path / "space")
    space = result.folder
    assert result.url is None and {p.name for p in space.iterdir()} == {"app.py", "requirements.txt", "README.md",
                                                                        "hf_animals"}
    meta = SpaceCard.load(space / "README.md").data
    assert (meta.sdk, meta.app_file, meta.models) == ("gradio", "app.py", ["someone/animals-cnn"])
    assert "hf-hub:someone/animals-cnn" in (space / "app.py").read_text()
    import torch
    assert f"torch=={torch.__version__.split('+')[0]}" in (space / "requirements.txt").read_text().splitlines()
    with pytest.raises(UserError, match="not an empty folder"):
        hub_extras.push_space("someone/animals-demo", "someone/animals-cnn", dry_run=space)

    # The Space's own app.py, run from its folder with its copy of hf_animals, on a local stand-in for the model.
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(HF_ANIMALS_MODEL=f"local-dir:{tiny_run}", PORT=str(port), HOST="127.0.0.1",
               GRADIO_ANALYTICS_ENABLED="False")
    which = subprocess.run([sys.executable, "-c", "import hf_animals; print(hf_animals.__file__)"], cwd=space,
                           env=env, capture_output=True, text=True, timeout=300)
    assert Path(which.stdout.strip()).parent == space / "hf_animals", which.stderr
    proc = subprocess.Popen([sys.executable, "app.py"], cwd=space, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.monotonic() + 240
        while True:
            assert proc.poll() is None, proc.stderr.read()[-2000:]
            try:
                urllib.request.urlopen(url, timeout=5)
                break
            except OSError:
                assert time.monotonic() < deadline, "the Space app did not start"
                time.sleep(1)
        image = predict.run_split_images(tiny_run, "test")[0][0]
        out = Client(url, verbose=False, analytics_enabled=False).predict(handle_file(str(image)), api_name="/predict")
        probs = predict.load_predictor(tiny_run, device="cpu").predict_paths([image])[0]
        names = predict.load_predictor(tiny_run, device="cpu").class_names
        assert out["label"] == names[int(probs.argmax())]
        for c in out["confidences"]:
            assert c["confidence"] == pytest.approx(float(probs[names.index(c["label"])]), abs=1e-4)
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_dataset_round_trip_matches_splits_csv(tiny_run, sample_dir, tmp_path):
    from datasets import Image as ImageFeature
    from datasets import load_from_disk
    from huggingface_hub import DatasetCard

    splits = tiny_run / "splits.csv"
    result = hub_extras.push_dataset("someone/animals-split", splits, dry_run=tmp_path / "ds")
    loaded = load_from_disk(str(result.folder))
    assert list(loaded) == ["train", "validation", "test"]
    rows = list(csv.DictReader(open(splits, newline="")))
    for manifest_split, hub_split in hub_extras.SPLIT_NAMES.items():
        expected = [r for r in rows if r["split"] == manifest_split]
        part = loaded[hub_split]
        assert part.features["label"].names == hfdata.class_names(rows)
        assert part["path"] == [r["path"] for r in expected]
        assert part["folder"] == [r["path"].split("/")[0] for r in expected]
        assert [part.features["label"].int2str(i) for i in part["label"]] == [r["label"] for r in expected]
        raw = part.cast_column("image", ImageFeature(decode=False))["image"]
        for item, row in zip(raw, expected):
            assert item["bytes"] == (sample_dir / row["path"]).read_bytes(), row["path"]
        for decoded, row in list(zip(part["image"], expected))[:5]:
            with Image.open(sample_dir / row["path"]) as original:
                assert np.array_equal(np.asarray(decoded), np.asarray(original))

    card = DatasetCard.load(result.folder / "README.md")
    assert card.data.task_categories == ["image-classification"]
    assert hfdata.manifest_hash(splits) in card.text
    assert f"split seed: {hfdata.read_manifest_info(splits)['options']['seed']}" in card.text
    counts = Counter((r["label"], r["split"]) for r in rows)
    for label in hfdata.class_names(rows):
        cells = " | ".join(str(counts[label, s]) for s in hub_extras.SPLIT_NAMES)
        assert f"| {label} | {label} | {cells} |" in card.text  # the sample's folders are named in English


def test_offline_pushes_fail_before_creating_anything(tiny_run, tmp_path):
    with pytest.raises(UserError, match="HF_HUB_OFFLINE"):
        hub_extras.push_space("someone/animals-demo", "someone/animals-cnn")
    with pytest.raises(UserError, match="HF_HUB_OFFLINE"):
        hub_extras.push_dataset("someone/animals-split", tiny_run / "splits.csv")
    with pytest.raises(UserError, match="USER/NAME"):
        hub_extras.push_space("no-slash", "someone/animals-cnn", dry_run=tmp_path / "s")
    assert not (tmp_path / "s").exists()
    proc = subprocess.run([sys.executable, "scripts/push_to_hub.py", "--dataset", "someone/animals-split",
                           "--splits", str(tmp_path / "missing.csv")], cwd=ROOT, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 2 and proc.stderr.startswith("error: manifest not found")
