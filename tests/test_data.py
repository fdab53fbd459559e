"""The data module: exact seeded splits, the manifest, bad input, transforms, the decoded cache."""
from __future__ import annotations

import csv
import importlib.util
import io
import logging
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from hf_animals import augment, data, image_cache, preprocess
from hf_animals.cli import run_main
from hf_animals.errors import UserError
from hf_animals.sample_data import write_sample_dataset

ROOT = Path(__file__).resolve().parents[1]


def _script_main(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main


def _counts(rows) -> Counter:
    return Counter((r["label"], r["split"]) for r in rows)


@pytest.fixture
def small_dir(tmp_path) -> Path:
    """A writable 3-class x 6-image folder of 32 px, for tests that damage it."""
    return write_sample_dataset(tmp_path / "small", classes=3, per_class=6, size=32, seed=3)


def _jpeg_bytes(size=(20, 16), colour=(200, 30, 30)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, colour).save(buf, "JPEG")
    return buf.getvalue()


# ------------------------------------------------------------------------------------------------ labels

def test_italian_names_map_to_english_and_back():
    assert data.ITALIAN_TO_ENGLISH["cane"] == "dog" and data.ITALIAN_TO_ENGLISH["scoiattolo"] == "squirrel"
    assert len(data.ITALIAN_TO_ENGLISH) == 10
    assert all(data.ENGLISH_TO_ITALIAN[e] == i for i, e in data.ITALIAN_TO_ENGLISH.items())
    assert data.english_label("ragno") == "spider"
    assert data.english_label("Gatto") == "cat"
    assert data.english_label("horse") == "horse"
    assert data.english_label("zebra") == "zebra"  # any other folder name is its own label


# ------------------------------------------------------------------------------------------------ split

def test_exact_per_class_counts(sample_dir):
    rows = data.make_manifest(sample_dir, train=6, val=3, test=2, seed=0)
    assert set(_counts(rows).values()) == {6, 3, 2}
    assert _counts(rows) == Counter({(label, s): n for label in data.class_names(rows)
                                     for s, n in (("train", 6), ("val", 3), ("test", 2))})
    assert len(data.class_names(rows)) == 10
    assert {r["split"] for r in rows} == set(data.SPLITS)
    for r in rows:
        assert not Path(r["path"]).is_absolute() and "\\" not in r["path"]
        assert (sample_dir / r["path"]).is_file() and len(r["sha1"]) == 40


def test_split_is_deterministic_and_depends_on_seed(sample_dir):
    a = data.make_manifest(sample_dir, train=6, val=3, test=2, seed=1)
    b = data.make_manifest(sample_dir, train=6, val=3, test=2, seed=1)
    c = data.make_manifest(sample_dir, train=6, val=3, test=2, seed=2)
    assert a == b
    assert {(r["path"], r["split"]) for r in a} != {(r["path"], r["split"]) for r in c}


def test_test_split_stays_when_only_train_count_changes(sample_dir):
    small = data.make_manifest(sample_dir, train=4, val=3, test=2, seed=5)
    large = data.make_manifest(sample_dir, train=10, val=3, test=2, seed=5)
    for split in ("val", "test"):
        assert {r["path"] for r in small if r["split"] == split} == {r["path"] for r in large if r["split"] == split}
    assert {r["path"] for r in small if r["split"] == "train"} < {r["path"] for r in large if r["split"] == "train"}


def test_splits_are_disjoint_by_path_and_content(sample_dir):
    rows = data.make_manifest(sample_dir, train=8, val=4, test=4, seed=0)
    for key in ("path", "sha1"):
        sets = [{r[key] for r in rows if r["split"] == s} for s in data.SPLITS]
        assert not (sets[0] & sets[1] or sets[0] & sets[2] or sets[1] & sets[2])


def test_byte_identical_files_are_kept_once_and_reported(small_dir, caplog):
    dog = sorted((small_dir / "dog").iterdir())
    shutil.copy(dog[0], small_dir / "dog" / "copy_in_same_class.jpg")
    shutil.copy(dog[1], small_dir / "horse" / "copy_in_other_class.jpg")
    with caplog.at_level(logging.WARNING, logger="hf_animals.data"):
        plan = data.plan_splits(small_dir, train=4, val=1, test=1, seed=0)
    assert len(plan.duplicates) == 2
    assert "copy_in_same_class.jpg" in caplog.text and "copy_in_other_class.jpg" in caplog.text
    assert "classes dog, horse" in caplog.text
    paths = {r["path"] for r in plan.rows}
    assert "dog/copy_in_same_class.jpg" not in paths and "horse/copy_in_other_class.jpg" not in paths
    assert len({r["sha1"] for r in plan.rows}) == len(plan.rows)


def test_proportional_split_for_small_classes(small_dir):
    for extra in sorted((small_dir / "elephant").iterdir())[:2]:
        extra.unlink()  # elephant keeps 4 images, others 6
    with pytest.raises(UserError, match=r"'elephant' has 4"):
        data.make_manifest(small_dir, train=3, val=1, test=1)
    rows = data.make_manifest(small_dir, train=3, val=1, test=1, proportional=True)
    counts = _counts(rows)
    assert [counts["elephant", s] for s in data.SPLITS] == [2, 1, 1]
    assert [counts["dog", s] for s in data.SPLITS] == [3, 1, 1]


def test_proportional_counts_keep_every_asked_split():
    assert data._proportional_counts("x", 100, (300, 75, 75)) == (67, 17, 16)
    assert sum(data._proportional_counts("x", 7, (300, 75, 75))) == 7
    assert min(data._proportional_counts("x", 3, (300, 75, 75))) == 1
    with pytest.raises(UserError, match="'x' has only 2"):
        data._proportional_counts("x", 2, (300, 75, 75))


def test_italian_folders_give_english_labels_and_the_same_split(tmp_path):
    it = write_sample_dataset(tmp_path / "it", classes=3, per_class=5, size=24, seed=4, italian=True)
    en = write_sample_dataset(tmp_path / "en", classes=3, per_class=5, size=24, seed=4)
    rows_it = data.make_manifest(it, train=3, val=1, test=1)
    rows_en = data.make_manifest(en, train=3, val=1, test=1)
    assert data.class_names(rows_it) == ["dog", "elephant", "horse"]
    assert rows_it[0]["path"].split("/")[0] in data.ITALIAN_TO_ENGLISH
    key = lambda rows: sorted((r["label"], Path(r["path"]).name, r["split"]) for r in rows)  # noqa: E731
    assert key(rows_it) == key(rows_en)


def test_hidden_and_non_image_files_are_ignored(small_dir, caplog):
    (small_dir / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    (small_dir / "dog" / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    (small_dir / "dog" / "Thumbs.db").write_bytes(b"\xd0\xcf\x11\xe0")
    (small_dir / "dog" / "._0001.jpg").write_bytes(b"AppleDouble")  # macOS resource fork, image-like name
    (small_dir / "dog" / "notes.txt").write_text("hello")
    (small_dir / ".ipynb_checkpoints").mkdir()
    (small_dir / "README.md").write_text("readme")
    with caplog.at_level(logging.INFO, logger="hf_animals.data"):
        rows = data.make_manifest(small_dir, train=4, val=1, test=1)
    assert data.class_names(rows) == ["dog", "elephant", "horse"]
    assert len(rows) == 18
    assert "notes.txt" in caplog.text


# ------------------------------------------------------------------------------------------------ manifest

def test_manifest_round_trip_and_reuse(sample_dir, tmp_path):
    out = tmp_path / "study"
    path = data.prepare_splits(sample_dir, out, train=6, val=3, test=2, seed=9)
    assert path == out / "splits.csv"
    with open(path, newline="") as f:
        assert csv.DictReader(f).fieldnames[:3] == ["path", "label", "split"]
    rows = data.read_manifest(path, sample_dir)
    assert rows == data.make_manifest(sample_dir, train=6, val=3, test=2, seed=9)
    assert data.read_manifest(path) == rows  # data folder remembered in splits.json
    info = data.read_manifest_info(path)
    assert info["options"]["seed"] == 9 and info["manifest_sha256"] == data.manifest_hash(path)

    before = path.read_bytes(), path.stat().st_mtime_ns
    assert data.prepare_splits(sample_dir, out, train=6, val=3, test=2, seed=9) == path
    assert (path.read_bytes(), path.stat().st_mtime_ns) == before  # reused, not rewritten
    with pytest.raises(UserError, match="was made with train=6 val=3 test=2 seed=9"):
        data.prepare_splits(sample_dir, out, train=6, val=3, test=2, seed=10)
    data.prepare_splits(sample_dir, out, train=6, val=3, test=2, seed=10, reuse=False)
    assert data.read_manifest(path) != rows


def test_manifest_hash_changes_with_content(sample_dir, tmp_path):
    a = data.write_manifest(data.make_manifest(sample_dir, train=4, val=2, test=2, seed=0), tmp_path / "a.csv")
    b = data.write_manifest(data.make_manifest(sample_dir, train=4, val=2, test=2, seed=1), tmp_path / "b.csv")
    assert len(data.manifest_hash(a)) == 16 and data.manifest_hash(a) != data.manifest_hash(b)


def test_changed_or_missing_files_invalidate_the_manifest(small_dir, tmp_path):
    path = data.prepare_splits(small_dir, tmp_path / "study", train=4, val=1, test=1)
    rows = data.read_manifest(path)
    changed, missing = small_dir / rows[0]["path"], small_dir / rows[1]["path"]
    changed.write_bytes(_jpeg_bytes())
    missing.unlink()
    with pytest.raises(UserError) as err:
        data.read_manifest(path)
    assert f"{rows[0]['path']}: changed" in str(err.value) and f"{rows[1]['path']}: missing" in str(err.value)
    with pytest.raises(UserError, match="no longer matches"):
        data.prepare_splits(small_dir, tmp_path / "study", train=4, val=1, test=1)
    assert data.read_manifest(path, verify=False) == rows


@pytest.mark.parametrize("text, message", [
    ("path,label\na.jpg,dog\n", "lacks column split"),
    ("path,label,split\na.jpg,dog,training\n", "line 2: split must be"),
    ("path,label,split\na.jpg,dog,train\na.jpg,dog,test\n", "listed twice"),
    ("path,label,split,sha1\na.jpg,dog,train,abc\nb.jpg,dog,test,abc\n", "byte-identical but in different"),
    ("path,label,split\n", "no rows"),
])
def test_malformed_manifests(tmp_path, text, message):
    path = tmp_path / "splits.csv"
    path.write_text(text)
    with pytest.raises(UserError, match=message):
        data.read_manifest(path, verify=False)


def test_split_table(sample_dir):
    table = data.split_table(data.make_manifest(sample_dir, train=6, val=3, test=2)).splitlines()
    assert table[0].split() == ["class", "train", "val", "test", "total"]
    assert table[1].split() == ["butterfly", "6", "3", "2", "11"]
    assert table[-1].split() == ["total", "60", "30", "20", "110"]
    assert len(table) == 12


# ------------------------------------------------------------------------------------------------ bad input

def _bad_folder(kind: str, tmp_path: Path, small_dir: Path) -> Path:
    if kind == "missing":
        return tmp_path / "nope"
    if kind == "empty":
        (tmp_path / "empty").mkdir()
        return tmp_path / "empty"
    if kind == "no-classes":
        flat = tmp_path / "flat"
        flat.mkdir()
        (flat / "a.jpg").write_bytes(_jpeg_bytes())
        return flat
    if kind == "empty-class":
        (small_dir / "cat").mkdir()
        (small_dir / "cat" / ".DS_Store").write_bytes(b"x")
        (small_dir / "cat" / "info.txt").write_text("x")
        return small_dir
    if kind == "one-class":
        shutil.rmtree(small_dir / "horse")
        shutil.rmtree(small_dir / "elephant")
        return small_dir
    if kind == "clash":
        shutil.copytree(small_dir / "dog", small_dir / "cane")
        return small_dir
    raise ValueError(kind)


@pytest.mark.parametrize("kind, message", [
    ("missing", "data folder not found: .*nope"),
    ("empty", "data folder is empty"),
    ("no-classes", "no class sub-folders .* found 1 file but"),
    ("empty-class", "class folder with no images .*'cat' \\(only 1 non-image file\\)"),
    ("one-class", "only one class folder \\('dog'\\)"),
    ("clash", "'cane' and 'dog' .* both class 'dog'"),
])
def test_bad_folders(kind, message, tmp_path, small_dir):
    with pytest.raises(UserError, match=message):
        data.make_manifest(_bad_folder(kind, tmp_path, small_dir), train=2, val=1, test=1)


def test_too_small_class_names_class_and_count(small_dir):
    (small_dir / "horse" / sorted(p.name for p in (small_dir / "horse").iterdir())[0]).unlink()
    with pytest.raises(UserError, match=r"train=4 val=1 test=1 \(6 images per class\): 'horse' has 5"):
        data.make_manifest(small_dir, train=4, val=1, test=1)


def test_bad_counts(small_dir):
    with pytest.raises(UserError, match="--train must be an integer >= 1"):
        data.make_manifest(small_dir, train=0)
    with pytest.raises(UserError, match="--val must be"):
        data.make_manifest(small_dir, train=1, val=-1)
    # No split may be empty: training picks its best epoch on val and reports on test.
    for counts in (dict(train=4, val=0, test=1), dict(train=4, val=1, test=0)):
        with pytest.raises(UserError, match=r"--(val|test) must be an integer >= 1"):
            data.make_manifest(small_dir, **counts)
        with pytest.raises(UserError, match=r"--(val|test) must be an integer >= 1"):
            data.make_manifest(small_dir, proportional=True, **counts)


def _damage(small_dir: Path) -> dict[str, str]:
    """Four kinds of bad file; returns relative path -> expected reason."""
    jpeg = _jpeg_bytes((64, 48))
    (small_dir / "dog" / "text.jpg").write_text("this is not an image")
    (small_dir / "dog" / "cut.jpeg").write_bytes(jpeg[: len(jpeg) // 2])
    png = next(p for p in sorted((small_dir / "horse").iterdir()) if p.suffix == ".png").read_bytes()
    (small_dir / "horse" / "cut.png").write_bytes(png[: len(png) - 30])
    (small_dir / "elephant" / "zero.png").write_bytes(b"")
    return {"dog/text.jpg": "not an image", "dog/cut.jpeg": "truncated", "horse/cut.png": "truncated",
            "elephant/zero.png": "empty file"}


def test_every_bad_file_is_reported(small_dir):
    expected = _damage(small_dir)
    with pytest.raises(UserError) as err:
        data.make_manifest(small_dir, train=4, val=1, test=1)
    message = str(err.value)
    assert message.startswith("4 bad image files") and "--skip-bad" in message
    for rel, reason in expected.items():
        line = next(line for line in message.splitlines() if line.strip().startswith(rel + ":"))
        assert reason in line, line


def test_skip_bad_lists_what_was_skipped(small_dir, tmp_path, caplog):
    expected = _damage(small_dir)
    with caplog.at_level(logging.WARNING, logger="hf_animals.data"):
        path = data.prepare_splits(small_dir, tmp_path / "s", train=4, val=1, test=1, skip_bad=True)
    assert "skipped 4 bad image files" in caplog.text
    assert all(rel in caplog.text for rel in expected)
    assert not {r["path"] for r in data.read_manifest(path)} & set(expected)
    assert {s["path"] for s in data.read_manifest_info(path)["skipped"]} == set(expected)


def test_prepare_data_script(sample_dir, tmp_path, capsys):
    main = _script_main("prepare_data")
    out = tmp_path / "study"
    args = ["--data-dir", str(sample_dir), "--output-dir", str(out), "--train", "6", "--val", "3", "--test", "2"]
    assert run_main(main, args) == 0
    printed = capsys.readouterr().out
    assert "total" in printed and f"manifest: {out / 'splits.csv'}" in printed
    assert printed.splitlines()[1].split() == ["butterfly", "6", "3", "2", "11"]
    assert run_main(main, args + ["--seed", "1"]) == 2
    assert capsys.readouterr().err.startswith("error: ")
    assert run_main(main, args + ["--seed", "1", "--overwrite"]) == 0


@pytest.mark.parametrize("args, message", [
    (["--data-dir", "/no/such/dir"], "error: data folder not found: /no/such/dir"),
    (["--train", "7"], "error: class too small for train=7 val=1 test=1"),
])
def test_prepare_data_script_errors_are_one_line_exit_2(small_dir, tmp_path, capsys, args, message):
    main = _script_main("prepare_data")
    base = ["--data-dir", str(small_dir), "--output-dir", str(tmp_path / "o"), "--train", "4", "--val", "1",
            "--test", "1"]
    assert run_main(main, base + args) == 2
    err = capsys.readouterr().err
    assert err.startswith(message) and "Traceback" not in err


# ------------------------------------------------------------------------------------------------ pixels

def test_sample_images_of_all_modes_load_as_rgb(sample_dir):
    rows = data.make_manifest(sample_dir, train=8, val=4, test=4)
    dd = data.load_image_dataset(sample_dir, rows)
    assert {s: len(dd[s]) for s in data.SPLITS} == {"train": 80, "val": 40, "test": 40}
    assert dd["train"].features["label"].names == data.class_names(rows)
    modes = set()
    for example in dd["val"]:
        modes.add(example["image"].mode)
        assert preprocess.rgb_image(example["image"]).mode == "RGB"
        assert preprocess.rgb_resized(example["image"], 16).shape == (16, 16, 3)
        assert dd["val"].features["label"].int2str(example["label"]) == example["path"].split("/")[0]
    assert {"RGB", "RGBA", "L", "P"} <= modes


def _two_halves(size: int = 40) -> torch.Tensor:
    """A uint8 image, red on the left half and blue on the right: a label-like property augmentation must keep."""
    image = torch.zeros((3, size, size), dtype=torch.uint8)
    image[0, :, : size // 2] = 200
    image[2, :, size // 2:] = 200
    return image


def _orientation(image: torch.Tensor) -> str:
    """'red|blue', 'blue|red' (mirrored) or 'mixed' from the outermost columns of an augmented _two_halves."""
    left, right = image[:, :, 0].float().mean(1), image[:, :, -1].float().mean(1)
    if left[0] > left[2] and right[2] > right[0]:
        return "red|blue"
    if left[2] > left[0] and right[0] > right[2]:
        return "blue|red"
    return "mixed"


def test_train_augmentation_keeps_the_content_and_varies_the_view():
    image = _two_halves()
    views = []
    for seed in range(12):
        torch.manual_seed(seed)
        views.append(augment.train_augmentation(32)(image))
    assert all(v.dtype == torch.uint8 and v.shape == (3, 32, 32) for v in views)
    # A crop of at least 80 % keeps both halves at the edges; flips mirror them; nothing else is invented.
    assert {_orientation(v) for v in views} == {"red|blue", "blue|red"}
    assert len({bytes(v.numpy()) for v in views}) == len(views)
    torch.manual_seed(3)
    assert torch.equal(augment.train_augmentation(32)(image), views[3])


def test_pil_transforms_match_the_cached_path():
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (30, 40, 4), dtype=np.uint8), "RGBA")
    mean, std = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
    classic = augment.build_transforms(24, mean, std, train=False)(image)
    cached = preprocess.normalize_batch(torch.from_numpy(preprocess.rgb_resized(image, 24)).permute(2, 0, 1), mean, std)
    assert classic.shape == (3, 24, 24) and torch.allclose(classic, cached, atol=1e-5)
    torch.manual_seed(0)
    augmented = augment.build_transforms(24, mean, std, train=True)(image)
    assert augmented.shape == (3, 24, 24) and not torch.allclose(augmented, classic)
    assert torch.equal(augment.build_transforms(24, mean, std, train=True, augment=False)(image), classic)


# ------------------------------------------------------------------------------------------------ decoded cache

@pytest.fixture
def manifest(sample_dir, tmp_path) -> Path:
    return data.prepare_splits(sample_dir, tmp_path / "study", train=6, val=3, test=2, seed=0)


def test_cache_arrays_match_rgb_resized(sample_dir, manifest, cache_dir):
    arrays = image_cache.cached_split_arrays(sample_dir, manifest, 24)
    rows = data.read_manifest(manifest)
    names = data.class_names(rows)
    for split, n in (("train", 60), ("val", 30), ("test", 20)):
        pixels, labels = arrays[split]
        assert pixels.shape == (n, 3, 24, 24) and pixels.dtype == torch.uint8
        assert labels.dtype == torch.int64
        part = [r for r in rows if r["split"] == split]
        assert [names[i] for i in labels.tolist()] == [r["label"] for r in part]
        for i in (0, n // 2, n - 1):
            expected = preprocess.load_rgb_resized(sample_dir / part[i]["path"], 24)
            assert np.array_equal(pixels[i].permute(1, 2, 0).numpy(), expected)
    assert list((cache_dir / "pixels").iterdir())  # default cache dir follows $HF_ANIMALS_CACHE


def test_cache_is_reused_without_decoding(sample_dir, manifest, cache_dir, monkeypatch):
    first = image_cache.cached_split_arrays(sample_dir, manifest, 16, cache_dir)
    files = sorted((cache_dir / "pixels" / image_cache.pixel_cache_key(manifest, 16)).glob("*.arrow"))
    assert [f.name for f in files] == ["test.arrow", "train.arrow", "val.arrow"]
    mtimes = [f.stat().st_mtime_ns for f in files]
    calls = []
    monkeypatch.setattr(preprocess, "load_rgb_resized", lambda *a: calls.append(a))
    second = image_cache.cached_split_arrays(sample_dir, manifest, 16, cache_dir)
    assert calls == [] and [f.stat().st_mtime_ns for f in files] == mtimes
    for split in data.SPLITS:
        assert torch.equal(first[split][0], second[split][0]) and torch.equal(first[split][1], second[split][1])
    second["train"][0][0, 0, 0, 0] += 1  # tensors are private copies, not views of the memory-mapped file
    assert torch.equal(image_cache.cached_split_arrays(sample_dir, manifest, 16, cache_dir)["train"][0], first["train"][0])


def test_cache_key_changes_with_manifest_and_size(sample_dir, manifest, tmp_path, cache_dir):
    other = data.prepare_splits(sample_dir, tmp_path / "other", train=6, val=3, test=2, seed=1)
    keys = {image_cache.pixel_cache_key(manifest, 16), image_cache.pixel_cache_key(manifest, 20), image_cache.pixel_cache_key(other, 16)}
    assert len(keys) == 3
    a = image_cache.cached_split_arrays(sample_dir, manifest, 16, cache_dir)
    b = image_cache.cached_split_arrays(sample_dir, other, 16, cache_dir)
    assert not torch.equal(a["train"][0], b["train"][0])
    assert image_cache.cached_split_arrays(sample_dir, manifest, 20, cache_dir)["train"][0].shape[-1] == 20


def test_cache_refuses_changed_files(small_dir, tmp_path, cache_dir):
    path = data.prepare_splits(small_dir, tmp_path / "s", train=4, val=1, test=1)
    image_cache.cached_split_arrays(small_dir, path, 16, cache_dir)
    (small_dir / data.read_manifest(path)[0]["path"]).write_bytes(_jpeg_bytes())
    with pytest.raises(UserError, match="changed"):
        image_cache.cached_split_arrays(small_dir, path, 16, cache_dir)


def test_manifest_without_sha1_keys_on_file_stats(small_dir, tmp_path, cache_dir):
    rows = [{k: v for k, v in r.items() if k != "sha1"} for r in data.make_manifest(small_dir, 4, 1, 1)]
    path = tmp_path / "plain.csv"
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, ["path", "label", "split"])
        writer.writeheader()
        writer.writerows(rows)
    before = image_cache.cached_split_arrays(small_dir, path, 16, cache_dir)["train"][0]
    target = small_dir / rows[0]["path"]
    target.write_bytes(_jpeg_bytes((30, 30), (0, 255, 0)))
    after = image_cache.cached_split_arrays(small_dir, path, 16, cache_dir)["train"][0]
    assert not torch.equal(before[0], after[0])
    assert np.array_equal(after[0].permute(1, 2, 0).numpy(), preprocess.load_rgb_resized(target, 16))


def test_image_tensor_dataset_with_augmentation(sample_dir, manifest, cache_dir):
    pixels, labels = image_cache.cached_split_arrays(sample_dir, manifest, 24, cache_dir)["train"]
    plain = image_cache.ImageTensorDataset(pixels, labels)
    assert len(plain) == 60 and torch.equal(plain[3][0], pixels[3]) and plain[3][1] == labels[3]
    augmented = image_cache.ImageTensorDataset(pixels, labels, transform=augment.train_augmentation(24))
    batch, target = next(iter(torch.utils.data.DataLoader(augmented, batch_size=8)))
    assert batch.dtype == torch.uint8 and batch.shape == (8, 3, 24, 24) and target.dtype == torch.int64
    with pytest.raises(ValueError):
        image_cache.ImageTensorDataset(pixels, labels[:-1])


def test_batch_augmentation_draws_per_image_and_is_seeded():
    image = torch.randint(0, 256, (3, 40, 40), dtype=torch.uint8)
    batch = image.expand(6, 3, 40, 40).contiguous()
    augmentation = augment.batch_augmentation(32)
    torch.manual_seed(0)
    out = augmentation(batch)
    assert out.dtype == torch.uint8 and out.shape == (6, 3, 32, 32)
    # The same image six times gets six different augmentations (v2 on a batch would repeat one).
    assert len({bytes(o.numpy()) for o in out}) == 6
    torch.manual_seed(0)
    assert torch.equal(augmentation(batch), out)
    assert augmentation(image).shape == (3, 32, 32)
    assert "RandomResizedCrop" in repr(augmentation)  # the report's notebook prints it as the recipe


def test_batch_augmentation_keeps_the_content_of_each_image():
    batch = _two_halves().expand(16, 3, 40, 40).contiguous()
    torch.manual_seed(0)
    out = augment.batch_augmentation(32)(batch)
    assert {_orientation(o) for o in out} == {"red|blue", "blue|red"}  # flipped per image, content kept


def test_batch_augmentation_without_randomness_is_a_resize_or_a_mirror():
    """With the random parts fixed, the per-image crop is exactly a bilinear resize (and a flip its mirror)."""
    image = torch.randint(0, 256, (2, 3, 40, 40), dtype=torch.uint8)
    fixed = dict(scale=(1.0, 1.0), ratio=(1.0, 1.0), brightness=0, contrast=0, saturation=0)
    resized = torch.nn.functional.interpolate(image.float(), size=(20, 20), mode="bilinear", align_corners=False)
    expected = resized.round().clamp(0, 255).to(torch.uint8)
    still = augment.BatchAugment(20, flip=0.0, **fixed)(image)
    assert (still.int() - expected.int()).abs().max() <= 1
    mirrored = augment.BatchAugment(20, flip=1.0, **fixed)(image)
    assert (mirrored.int() - expected.flip(-1).int()).abs().max() <= 1
