"""Two more things to put on the Hub: a Gradio Space that serves a pushed model, and the exact split as a dataset.

Both follow `hub.push_run`: check everything locally first, `--dry-run DIR` writes exactly what would be uploaded,
and a real push starts with `hub.check_hub_access`, so offline or without a token it fails in seconds, before anything
is created remotely.

Space: the folder holds `app.py`, a copy of this `hf_animals` package (so the Space runs the very preprocessing and
app code of `scripts/app.py`, not a re-typed version of it), `requirements.txt` pinned to the versions that wrote it,
and a README whose front matter (`sdk: gradio`, `app_file: app.py`) makes it a Gradio Space.

Dataset: a `datasets.DatasetDict` (train/validation/test) built from splits.csv, the original file bytes embedded
(JPEG stays JPEG, bit for bit), with `label` a ClassLabel, the Animals-10 folder name and the relative path kept as
columns, and a dataset card with the counts per class and split, the split seed and the manifest hash.
"""
from __future__ import annotations

import importlib.metadata
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from . import data as hfdata
from .errors import UserError
from .catalogue import PROJECT_LICENSE
from .hub import check_hub_access, check_repo_id, push_folder

PACKAGE_DIR = Path(__file__).resolve().parent
SPACE_REQUIREMENTS = ("torch", "torchvision", "timm", "huggingface_hub", "safetensors", "numpy")
SPLIT_NAMES = {"train": "train", "val": "validation", "test": "test"}  # manifest split -> Hub split name


@dataclass
class HubWrite:
    repo_id: str
    folder: Path  # what was (or would be) uploaded
    url: str | None  # commit / repo URL; None for a dry run


def _empty_output(out_dir: str | Path) -> Path:
    out = Path(out_dir)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UserError(f"{out} is not an empty folder: choose a new folder for the files")
    return out


# ----------------------------------------------------------------------------------------------------------------
# The Space
# ----------------------------------------------------------------------------------------------------------------
SPACE_APP = '''"""Gradio Space serving the image classifier {model_id} (written by hf_animals: push_to_hub.py --space).

The hf_animals folder beside this file is the package that trained and exported the model: the same decode, resize
and normalisation as its scripts/predict.py. HF_ANIMALS_MODEL overrides the model (e.g. local-dir:DIR to try it).
"""
import os

from hf_animals import app

MODEL = os.environ.get("HF_ANIMALS_MODEL", "hf-hub:{model_id}")

if __name__ == "__main__":
    app.launch(MODEL, host=os.environ.get("HOST", "0.0.0.0"), port=int(os.environ.get("PORT", "7860")))
'''


def space_requirements() -> str:
    """requirements.txt of the Space: this environment's versions. gradio itself comes from the README's
    sdk_version; pillow is left to gradio, whose 6.x releases cap it below 13."""
    lines = [f"{name}=={importlib.metadata.version(name)}" for name in SPACE_REQUIREMENTS]
    return "\n".join(lines) + "\n"


def space_card(space_id: str, model_id: str, license: str | None = None):
    """README.md of the Space: the front matter that makes it a Gradio Space, then a few lines of prose."""
    import gradio
    from huggingface_hub import SpaceCard, SpaceCardData

    data = SpaceCardData(title=space_id.split("/")[1], sdk="gradio", sdk_version=gradio.__version__,
                         python_version="3.11", app_file="app.py", license=license or PROJECT_LICENSE,
                         models=[model_id], tags=["image-classification", "hf_animals"],
                         short_description="Image classifier trained with hf_animals")
    body = (f"# {space_id.split('/')[1]}\n\nUpload or paste an image: the classifier "
            f"[{model_id}](https://huggingface.co/{model_id}) shows its top classes. The app and the preprocessing "
            f"are hf_animals' own (`scripts/app.py`), copied into this Space, so the numbers match its "
            f"`scripts/predict.py`.\n")
    return SpaceCard(f"---\n{data.to_yaml()}\n---\n\n{body}")


def write_space_folder(out_dir: str | Path, space_id: str, model_id: str, *, license: str | None = None) -> Path:
    """Exactly the files a Space push uploads: app.py, requirements.txt, README.md, hf_animals/."""
    space_id, model_id = check_repo_id(space_id), check_repo_id(model_id)
    out = _empty_output(out_dir)
    card = space_card(space_id, model_id, license)
    out.mkdir(parents=True, exist_ok=True)
    (out / "app.py").write_text(SPACE_APP.format(model_id=model_id))
    (out / "requirements.txt").write_text(space_requirements())
    (out / "README.md").write_text(str(card).rstrip("\n") + "\n", encoding="utf-8")
    shutil.copytree(PACKAGE_DIR, out / "hf_animals", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    return out


def push_space(space_id: str, model_id: str, *, private: bool = False, dry_run: str | Path | None = None,
               token: str | None = None, license: str | None = None) -> HubWrite:
    """Write the Space folder to `dry_run`, or upload it to `space_id` in one commit (creating the Space)."""
    space_id, model_id = check_repo_id(space_id), check_repo_id(model_id)
    if dry_run is not None:
        return HubWrite(space_id, write_space_folder(dry_run, space_id, model_id, license=license), None)
    token, _ = check_hub_access(token)
    with tempfile.TemporaryDirectory(prefix="hf_animals_space_") as tmp:
        folder = write_space_folder(Path(tmp) / "space", space_id, model_id, license=license)
        url = push_folder(folder, space_id, token=token, private=private, repo_type="space",
                          message=(f"Gradio app for {model_id}", "Written by hf_animals push_to_hub.py --space."))
    return HubWrite(space_id, Path(space_id), url)


# ----------------------------------------------------------------------------------------------------------------
# The split as a dataset
# ----------------------------------------------------------------------------------------------------------------
def folder_name(rel_path: str) -> str:
    """The class folder an image came from ('cane' for 'cane/OIP-1.jpg'): Animals-10's own (Italian) label."""
    return Path(rel_path).parts[0]


def split_dataset(splits_csv: str | Path, data_dir: str | Path | None = None):
    """DatasetDict train/validation/test: image (original bytes), label (ClassLabel), folder, path; manifest order."""
    from datasets import ClassLabel, Dataset, DatasetDict, Features, Value
    from datasets import Image as ImageFeature

    root = hfdata.manifest_data_dir(splits_csv, data_dir)
    rows = hfdata.read_manifest(splits_csv, root, verify=True)
    names = hfdata.class_names(rows)
    features = Features({"image": ImageFeature(), "label": ClassLabel(names=names), "folder": Value("string"),
                         "path": Value("string")})
    out = DatasetDict()
    for split, hub_name in SPLIT_NAMES.items():
        part = [r for r in rows if r["split"] == split]
        out[hub_name] = Dataset.from_dict({
            "image": [{"bytes": (root / r["path"]).read_bytes(), "path": Path(r["path"]).name} for r in part],
            "label": [names.index(r["label"]) for r in part],
            "folder": [folder_name(r["path"]) for r in part],
            "path": [r["path"] for r in part]}, features=features)
    return out


def dataset_card(splits_csv: str | Path, dataset, repo_id: str, *, license: str | None = None):
    """README.md of the dataset: counts per class and split, the seed and the manifest hash of the split."""
    from huggingface_hub import DatasetCard, DatasetCardData

    info = hfdata.read_manifest_info(splits_csv) or {}
    seed = (info.get("options") or {}).get("seed", "not recorded")
    names = dataset["train"].features["label"].names
    counts = {split: [0] * len(names) for split in dataset}
    folders: dict[str, set[str]] = {name: set() for name in names}
    for split, part in dataset.items():
        for label, folder in zip(part["label"], part["folder"]):
            counts[split][label] += 1
            folders[names[label]].add(folder)
    header = "| class | folder | " + " | ".join(dataset) + " |\n|---|---|" + "---:|" * len(dataset) + "\n"
    table = "".join(f"| {name} | {', '.join(sorted(folders[name]))} | "
                    + " | ".join(str(counts[s][i]) for s in dataset) + " |\n" for i, name in enumerate(names))
    table += "| **total** | | " + " | ".join(str(sum(counts[s])) for s in dataset) + " |\n"
    total = sum(len(part) for part in dataset.values())
    data = DatasetCardData(license=license, task_categories=["image-classification"],
                           pretty_name=repo_id.split("/")[1], tags=["hf_animals", "animals-10"],
                           size_categories="n<1K" if total < 1000 else "1K<n<10K" if total < 10_000 else "10K<n<100K")
    body = (f"# {repo_id.split('/')[1]}\n\nThe exact train/validation/test split used by hf_animals "
            f"(`scripts/prepare_data.py`): {total} images of {len(names)} classes, the original files unchanged.\n\n"
            f"- split seed: {seed}\n- manifest (splits.csv) hash: `{hfdata.manifest_hash(splits_csv)}`\n"
            f"- columns: `image`, `label` (ClassLabel, English names), `folder` (the original class folder, "
            f"Animals-10's Italian name), `path` (relative to the image folder)\n\n## Images per class and split\n\n"
            f"{header}{table}")
    return DatasetCard(f"---\n{data.to_yaml()}\n---\n\n{body}")


def push_dataset(repo_id: str, splits_csv: str | Path, data_dir: str | Path | None = None, *, private: bool = False,
                 dry_run: str | Path | None = None, token: str | None = None,
                 license: str | None = None) -> HubWrite:
    """Push the split (parquet shards + card), or with `dry_run` save_to_disk it and write the card there."""
    repo_id = check_repo_id(repo_id)
    hfdata.read_manifest(splits_csv, data_dir, verify=True)  # a bad manifest fails before anything else
    if dry_run is not None:
        out = _empty_output(dry_run)
        dataset = split_dataset(splits_csv, data_dir)
        card = dataset_card(splits_csv, dataset, repo_id, license=license)
        dataset.save_to_disk(str(out))
        (out / "README.md").write_text(str(card).rstrip("\n") + "\n", encoding="utf-8")
        return HubWrite(repo_id, out, None)
    token, _ = check_hub_access(token)
    dataset = split_dataset(splits_csv, data_dir)
    card = dataset_card(splits_csv, dataset, repo_id, license=license)
    try:
        info = dataset.push_to_hub(repo_id, token=token, private=private,
                                   commit_message=f"Upload the hf_animals split {hfdata.manifest_hash(splits_csv)}")
        card.push_to_hub(repo_id, token=token, repo_type="dataset", commit_message="Dataset card")
    except Exception as err:
        if not (isinstance(err, OSError) or type(err).__module__.startswith(("huggingface_hub", "httpx"))):
            raise  # a bug, not the Hub or the network: keep the traceback
        raise UserError(f"push of the dataset to {repo_id} failed ({type(err).__name__}: "
                        f"{(str(err).splitlines() or [''])[0]})") from None
    return HubWrite(repo_id, Path(splits_csv), getattr(info, "commit_url", None))
