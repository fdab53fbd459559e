"""The generated stand-in for Animals-10: layout, mixed real-world file kinds, determinism, safety."""
from __future__ import annotations

import hashlib
import importlib.util
from collections import Counter
from pathlib import Path

import pytest
from PIL import Image

from hf_animals.cli import run_main
from hf_animals.errors import UserError
from hf_animals.sample_data import CLASS_NAMES, ITALIAN_NAMES, write_sample_dataset

ROOT = Path(__file__).resolve().parents[1]


def _files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and not p.name.startswith("."))


def _digests(folder: Path) -> dict[str, str]:
    return {p.relative_to(folder).as_posix(): hashlib.sha1(p.read_bytes()).hexdigest() for p in _files(folder)}


def _script(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_layout_counts_and_names(sample_dir):
    assert sorted(p.name for p in sample_dir.iterdir() if p.is_dir()) == sorted(CLASS_NAMES)
    for name in CLASS_NAMES:
        assert len(_files(sample_dir / name)) == 16


def test_files_are_mixed_like_a_scraped_set(sample_dir):
    formats, modes, sizes, suffixes = Counter(), Counter(), set(), Counter()
    for path in _files(sample_dir):
        with Image.open(path) as image:
            image.load()
            formats[image.format] += 1
            modes[image.mode] += 1
            sizes.add(image.size)
        suffixes[path.suffix] += 1
    assert set(formats) == {"JPEG", "PNG"}
    assert {"RGB", "RGBA", "L", "P"} <= set(modes)
    assert {".jpg", ".jpeg", ".png"} <= set(suffixes)
    assert len(sizes) > 50  # varied sizes and aspect ratios
    assert min(min(s) for s in sizes) >= 30 and max(max(s) for s in sizes) <= 48 * 2


def test_every_class_has_every_file_kind(sample_dir):
    for name in CLASS_NAMES:
        modes = set()
        for path in _files(sample_dir / name):
            with Image.open(path) as image:
                modes.add(image.mode)
        assert {"RGB", "RGBA", "L", "P"} <= modes, name


def test_no_byte_identical_files(sample_dir):
    digests = list(_digests(sample_dir).values())
    assert len(set(digests)) == len(digests)


def test_same_seed_same_bytes_other_seed_other_images(tmp_path):
    a = _digests(write_sample_dataset(tmp_path / "a", classes=3, per_class=4, size=32, seed=7))
    b = _digests(write_sample_dataset(tmp_path / "b", classes=3, per_class=4, size=32, seed=7))
    c = _digests(write_sample_dataset(tmp_path / "c", classes=3, per_class=4, size=32, seed=8))
    assert a == b
    assert not set(a.values()) & set(c.values())


def test_italian_folder_names(tmp_path):
    out = write_sample_dataset(tmp_path / "it", classes=10, per_class=1, size=24, seed=0, italian=True)
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == sorted(ITALIAN_NAMES)


def test_rerun_replaces_own_output_but_never_foreign_data(tmp_path):
    out = tmp_path / "data"
    write_sample_dataset(out, classes=3, per_class=5, size=24, seed=0)
    write_sample_dataset(out, classes=2, per_class=2, size=24, seed=0)
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == ["dog", "horse"]
    assert len(_files(out)) == 4
    foreign = tmp_path / "photos"
    foreign.mkdir()
    (foreign / "holiday.jpg").write_bytes(b"precious")
    with pytest.raises(UserError, match="not empty"):
        write_sample_dataset(foreign, classes=2, per_class=1, size=24)
    assert (foreign / "holiday.jpg").read_bytes() == b"precious"


@pytest.mark.parametrize("kwargs, message", [
    (dict(classes=11), "--classes"), (dict(per_class=0), "--per-class"), (dict(size=8), "--size")])
def test_bad_arguments(tmp_path, kwargs, message):
    with pytest.raises(UserError, match=message):
        write_sample_dataset(tmp_path / "x", **{"classes": 2, "per_class": 1, "size": 24, **kwargs})


def test_script(tmp_path, capsys):
    main = _script("make_sample_data").main
    out = tmp_path / "s"
    assert run_main(main, [str(out), "--classes", "2", "--per-class", "3", "--size", "24", "--seed", "1",
                           "--italian"]) == 0
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == ["cane", "cavallo"]
    assert "2 classes x 3 images" in capsys.readouterr().out
    assert run_main(main, [str(out), "--classes", "12"]) == 2
    assert "error: --classes" in capsys.readouterr().err
