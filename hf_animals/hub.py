"""Model cards, the upload folder, and pushing a run (or a study's best runs) to the Hugging Face Hub.

The card is rendered by `huggingface_hub.ModelCard.from_template` from `templates/model_card.md`; its YAML header is
a `ModelCardData` with `model-index` `EvalResult`s. Every number and fact in a card is read from the run folder's own
files (config.json, run.json, metrics.json, history.json, splits.csv) through `runs.load_run`, the family sentence
and the weight provenance from the catalogue, and the data from what the split lists (Animals-10 is named only when
the classes are Animals-10's). The upload folder keeps timm's Hub layout (config.json + model.safetensors), so
`timm.create_model("hf-hub:USER/NAME", pretrained=True)` loads it.
"""
from __future__ import annotations

import csv
import json
import math
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from . import augment as hfaugment
from . import catalogue, costs, runs
from . import data as hfdata
from .dataset_info import DatasetInfo, describe_split
from .errors import UserError

if TYPE_CHECKING:  # imported lazily at run time: huggingface_hub is only needed to write or push cards
    from huggingface_hub import ModelCard, ModelCardData

CARD_TEMPLATE = Path(__file__).resolve().parent / "templates" / "model_card.md"
DEFAULT_REPO_PREFIX = "hf-animals-"
# run.json arguments that are paths on the training machine: only their last component is published.
LOCAL_PATH_ARGS = ("data_dir", "output_dir", "splits", "cache_dir", "pretrained_file")


# ----------------------------------------------------------------------------------------------------------------
# The data a run was trained on
# ----------------------------------------------------------------------------------------------------------------
def splits_file(run_dir: Path, run: dict) -> Path | None:
    """The run's splits.csv: in the run folder, or where run.json says it was."""
    for p in (run_dir / runs.SPLITS_FILE, Path(run["splits"]) if run.get("splits") else None):
        if p is not None and p.is_file():
            return p
    return None


def split_rows_of(record: runs.RunRecord) -> list[dict]:
    """The rows of the run's splits.csv (path, label, split), or [] when it cannot be found."""
    path = splits_file(record.path, record.run)
    if path is None:
        return []
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def dataset_of(record: runs.RunRecord, rows: list[dict]) -> DatasetInfo:
    """What the run was trained on: the split's classes and folders, plus formats and sizes when the image folder
    of run.json is at hand; without a split file, the model's own class names."""
    if rows:
        return describe_split(rows, record.get("args", {}).get("data_dir"))
    classes = list(record.config.get("label_names") or record.class_names)
    return DatasetInfo(classes=classes, folders={c: c for c in classes}, num_images=0)


def split_table(info: DatasetInfo, rows: list[dict], classes: list[str]) -> tuple[list[str], list[list]]:
    """(header, rows) of the card's per-class split counts; Animals-10's own folder names only for Animals-10."""
    counts: dict[str, dict[str, int]] = {}
    for row in rows:
        per = counts.setdefault(row["label"], dict.fromkeys(hfdata.SPLITS, 0))
        per[row["split"]] = per.get(row["split"], 0) + 1
    header = ["class", *(["Animals-10 folder"] if info.animals10 else []), *hfdata.SPLITS]
    table = [[name, *([info.italian(name)] if info.animals10 else []),
              *(counts.get(name, {}).get(s, 0) for s in hfdata.SPLITS)] for name in classes]
    if table:
        table.append(["**total**", *([""] if info.animals10 else []),
                      *(sum(r[i] for r in table) for i in range(len(header) - len(hfdata.SPLITS), len(header)))])
    return header, table


def dataset_text(info: DatasetInfo) -> str:
    """One sentence on the files the scan found ('' when the images were not at hand)."""
    if not info.formats:
        return ""
    formats = ", ".join(f"{name} ({n:,})" for name, n in info.formats.items())
    sizes = f", {info.widths[0]}–{info.widths[1]} × {info.heights[0]}–{info.heights[1]} pixels" if info.widths else ""
    source = "generated sample images (`scripts/make_sample_data.py`), not photos" if info.synthetic else "images"
    return f"{info.num_images:,} {source}: {formats}; colour modes {', '.join(info.modes)}{sizes}."


# ----------------------------------------------------------------------------------------------------------------
# The card
# ----------------------------------------------------------------------------------------------------------------
def _pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def _num(x) -> str:
    if isinstance(x, bool) or x is None:
        return str(x)
    if isinstance(x, int):
        return f"{x:,}"
    if isinstance(x, float):
        return f"{x:.4g}"
    return str(x)


def wilson_interval(correct: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson score interval of an accuracy: how much a small test split can be trusted."""
    if n == 0:
        return 0.0, 1.0
    p = correct / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def regime_text(record: runs.RunRecord) -> str:
    """What was trained, in words: the modules training recorded as trainable and the effective learning rates
    (run.json's backbone_lr_scale is what the optimizer applied: 1 for weights that were never trained)."""
    weights, unfreeze = record.weights, record.unfreeze
    lr = record.get("args", {}).get("lr")
    if not weights.pretrained:
        start = "from scratch" if weights.kind == "scratch" else f"from random initialisation ({weights.label})"
        trained = "every layer" if unfreeze == "all" else f"only `{unfreeze}` (the rest stays random)"
        return f"Trained {start}: {trained}, learning rate {_num(lr)}."
    if record.head_only:
        return (f"Linear probe: the pretrained backbone is frozen (its learned features, BatchNorm statistics "
                f"included) and only the classifier (`{unfreeze}`) is trained, at learning rate {_num(lr)}.")
    if unfreeze == "all":
        what = "Full fine-tuning: every layer is trained"
    else:
        modules = ", ".join(f"`{m}`" for m in catalogue.unfreeze_modules(unfreeze))
        what = (f"Partial fine-tuning: {modules} are trained, everything before them is frozen (frozen BatchNorm "
                f"layers keep their pretrained statistics)")
    scale = record.get("backbone_lr_scale")
    return (f"{what}. The head learns at {_num(lr)} and the pretrained layers at {_num(lr)} × {_num(scale)}"
            f" = {_num(lr * scale)}.")


def hyperparameter_rows(record: runs.RunRecord) -> list[tuple[str, str]]:
    run, args = record.run, record.get("args", {})
    size = run.get("image_size")
    rows = [
        ("model", f"`{run.get('model')}`"), ("regime (--unfreeze)", f"`{run.get('unfreeze')}`"),
        ("image size", f"{size} × {size}"),
        ("epochs (run / max)", f"{run.get('epochs_run', '?')} / {args.get('epochs')}"),
        ("best epoch (by validation accuracy)", str(run.get("best_epoch"))),
        ("batch size", str(args.get("batch_size"))), ("optimizer", str(args.get("optimizer"))),
        ("learning rate (head)", _num(args.get("lr"))),
        ("backbone lr scale (applied)", _num(run.get("backbone_lr_scale")) if record.weights.pretrained
         else "not used (no pretrained layers)"),
        ("momentum", _num(args.get("momentum"))), ("weight decay", _num(args.get("weight_decay"))),
        ("label smoothing", _num(args.get("label_smoothing"))), ("schedule", str(args.get("sched"))),
        ("warm-up epochs", str(args.get("warmup_epochs"))),
        ("early stopping patience", str(args.get("early_stopping"))),
        ("augmentation", hfaugment.batch_augmentation(size).extra_repr() if args.get("augment") and size else "none"),
        ("mixed precision", str(run.get("mixed_precision"))), ("seed", str(run.get("seed"))),
        ("parameters (trainable / total)", f"{_num(run.get('params_trainable'))} / {_num(run.get('params_total'))}"),
    ]
    if record.config.get("model_args"):
        rows.append(("model arguments", f"`{json.dumps(record.config['model_args'])}`"))
    return rows


def metric_context(record: runs.RunRecord, info: DatasetInfo) -> dict:
    """The card's test numbers: accuracy with its interval, macro metrics, per-class rows, last-epoch accuracies."""
    metrics = record.metrics
    n_test = int(metrics["num_samples"])
    lo, hi = wilson_interval(round(metrics["accuracy"] * n_test), n_test)
    last = record.history[-1] if record.history else {}
    return {
        "accuracy": _pct(metrics["accuracy"]), "accuracy_ci": f"{_pct(lo)}–{_pct(hi)}",
        "precision": _pct(metrics["precision_macro"]), "recall": _pct(metrics["recall_macro"]),
        "f1": _pct(metrics["f1_macro"]), "num_test": n_test, "best_val_accuracy": _pct(record.best_val_accuracy),
        "best_epoch": record.get("best_epoch"),
        "final_train_acc": _pct(last["train_acc"]) if last else "n/a",
        "final_val_acc": _pct(last["val_acc"]) if last else "n/a",
        "per_class_header": ["class", *(["Animals-10 folder"] if info.animals10 else []), "precision", "recall",
                             "F1", "test images"],
        "per_class": [[name, *([info.italian(name)] if info.animals10 else []), f"{m['precision']:.3f}",
                       f"{m['recall']:.3f}", f"{m['f1']:.3f}", str(m["support"])]
                      for name, m in metrics["per_class"].items()],
        "_metrics": {"accuracy": metrics["accuracy"], "f1": metrics["f1_macro"],
                     "precision": metrics["precision_macro"], "recall": metrics["recall_macro"]},
    }


def cost_context(record: runs.RunRecord) -> dict:
    """The card's compute numbers: total time = one-time caches + training (what costs are compared on), and the
    latency as the median ± interquartile range of repeated timings (`costs`), never a single measurement."""
    run = record.run
    cells = costs.comparison_costs(run) if run.get("train_time_s") is not None else {}
    return {
        "train_time": f"{run['train_time_s']:.1f} s" if run.get("train_time_s") is not None else "n/a",
        "cache_time": f"{cells['cache_s']:.1f} s" if cells else "n/a",
        "total_time": f"{cells['total_s']:.1f} s" if cells else "n/a",
        "time_to_best": f"{run['time_to_best_s']:.1f} s" if run.get("time_to_best_s") is not None else "n/a",
        "images_per_s": f"{run['images_per_s']:.0f}" if run.get("images_per_s") else "n/a",
        "peak_memory": f"{run['peak_memory_mb']:.0f} MB" if run.get("peak_memory_mb") else "n/a",
        "latency": costs.latency_text(cells or {"latency_ms_per_image": record.metrics.get("latency_ms_per_image")}),
        "checkpoint_mb": f"{run['checkpoint_bytes'] / 2**20:.1f} MB" if run.get("checkpoint_bytes") else "n/a",
        "device": run.get("device"), "num_processes": run.get("num_processes", 1),
        "versions": ", ".join(f"{k} {v}" for k, v in run.get("versions", {}).items()),
    }


def card_context(run_dir: Path, repo_id: str, *, dataset_name: str | None = None) -> dict:
    """Everything the template shows, as strings and rows, read from the run folder."""
    record = runs.load_run(run_dir)
    weights, family, pcfg = record.weights, record.family, record.config.get("pretrained_cfg", {})
    rows = split_rows_of(record)
    info = dataset_of(record, rows)
    classes = list(record.config.get("label_names") or record.class_names)
    split_header, split_table_rows = split_table(info, rows, classes)
    data_dir = Path(str(record.get("args", {}).get("data_dir") or "")).name
    return {
        "repo_id": repo_id, "model_name": repo_id.split("/")[-1],
        "architecture": record.config.get("architecture", record.model),
        "architecture_text": family.architecture if family else f"timm `{record.model}`",
        "is_scratch_cnn": family is not None and not family.pretrained,
        "weights": weights.label, "weights_source": weights.source, "pretrained": weights.pretrained,
        "base_model": weights.base_model, "regime": record.unfreeze, "regime_text": regime_text(record),
        "dataset_name": dataset_name or info.title(data_dir) or "imagefolder", "animals10": info.animals10,
        "dataset_text": dataset_text(info), "num_classes": len(classes),
        "classes": ", ".join(f"{c} ({info.italian(c)})" if info.italian(c) else c for c in classes),
        "image_size": record.get("image_size"),
        "mean": ", ".join(f"{v:.3f}" for v in pcfg.get("mean", ())),
        "std": ", ".join(f"{v:.3f}" for v in pcfg.get("std", ())),
        "hyperparameters": hyperparameter_rows(record), "split_header": split_header,
        "split_rows": split_table_rows, "split_seed": record.get("seed"),
        "num_train": f"{sum(r['split'] == 'train' for r in rows):,} training" if rows else "its training",
        "splits_sha256": record.get("splits_sha256"),
        "figures": [name for name in runs.FIGURES if (run_dir / name).is_file()],
        **metric_context(record, info), **cost_context(record),
        "_license": weights.license or catalogue.PROJECT_LICENSE,  # underscore: for the YAML header only
    }


def card_data(ctx: dict, *, license: str | None = None, dataset_id: str | None = None) -> "ModelCardData":
    """The card's YAML header: license, timm, image-classification, base_model, dataset and model-index results."""
    from huggingface_hub import EvalResult, ModelCardData

    common = dict(task_type="image-classification", task_name="Image Classification",
                  dataset_type=dataset_id or "imagefolder", dataset_name=ctx["dataset_name"], dataset_split="test")
    metrics = {"accuracy": ("accuracy", "Accuracy", None), "f1": ("f1", "Macro F1", "macro"),
               "precision": ("precision", "Macro precision", "macro"), "recall": ("recall", "Macro recall", "macro")}
    results = [EvalResult(metric_type=t, metric_name=n, metric_config=c,
                          metric_value=round(float(ctx["_metrics"][key]), 4), **common)
               for key, (t, n, c) in metrics.items()]
    tags = ["image-classification", "timm", "hf_animals", *(["animals-10"] if ctx["animals10"] else []),
            ctx["architecture"], "transfer-learning" if ctx["pretrained"] else "trained-from-scratch"]
    return ModelCardData(
        license=license or ctx["_license"],
        library_name="timm",
        pipeline_tag="image-classification",
        tags=tags,
        base_model=ctx["base_model"],
        datasets=[dataset_id] if dataset_id else None,
        metrics=["accuracy", "f1", "precision", "recall"],
        model_name=ctx["model_name"],
        eval_results=results,
    )


def make_model_card(run_dir: str | Path, repo_id: str, *, dataset_name: str | None = None,
                    dataset_id: str | None = None,
                    license: str | None = None) -> "ModelCard":
    """The run's model card (README.md), rendered from templates/model_card.md. dataset_name: how the card names
    the data (default: 'Animals-10' for Animals-10's classes, else the training folder's name)."""
    from huggingface_hub import ModelCard

    run_dir = runs.require_complete(run_dir)
    ctx = card_context(run_dir, repo_id, dataset_name=dataset_name)
    data = card_data(ctx, license=license, dataset_id=dataset_id)
    return ModelCard.from_template(data, template_path=str(CARD_TEMPLATE),
                                   **{k: v for k, v in ctx.items() if not k.startswith("_")})


# ----------------------------------------------------------------------------------------------------------------
# The upload folder
# ----------------------------------------------------------------------------------------------------------------
def public_run_json(run: dict) -> dict:
    """run.json without the training machine's paths (only their last component is kept)."""
    run = json.loads(json.dumps(run))
    args = run.get("args", {})
    for key in LOCAL_PATH_ARGS:
        if args.get(key):
            args[key] = Path(str(args[key])).name
    if run.get("splits"):
        run["splits"] = Path(run["splits"]).name
    return run


def write_upload_folder(run_dir: str | Path, out_dir: str | Path, repo_id: str, **card_kwargs) -> Path:
    """Exactly the files a push uploads: config.json, model.safetensors, README.md, metrics, history, figures/."""
    run_dir = runs.require_complete(run_dir)
    repo_id = check_repo_id(repo_id)
    out = Path(out_dir)
    if out.exists() and any(out.iterdir()):
        raise UserError(f"{out} is not empty: choose a new folder for the upload files")
    card = make_model_card(run_dir, repo_id, **card_kwargs)  # before writing anything: a bad run fails cleanly
    out.mkdir(parents=True, exist_ok=True)
    for name in (*runs.MODEL_FILES, runs.METRICS_JSON, *runs.HISTORY_FILES):
        if (run_dir / name).is_file():
            shutil.copy2(run_dir / name, out / name)
    run = runs.read_json(run_dir / runs.RUN_JSON)
    (out / runs.RUN_JSON).write_text(json.dumps(public_run_json(run), indent=2))
    splits = splits_file(run_dir, run)
    if splits is not None:
        shutil.copy2(splits, out / "splits.csv")
    figures = [name for name in runs.FIGURES if (run_dir / name).is_file()]
    if figures:
        (out / "figures").mkdir()
        for name in figures:
            shutil.copy2(run_dir / name, out / "figures" / name)
    (out / "README.md").write_text(str(card).rstrip("\n") + "\n", encoding="utf-8")  # = card.save, plus a final newline
    return out


def commit_message(run_dir: Path) -> tuple[str, str]:
    """(title, description) of the upload commit, from the run's own numbers."""
    record = runs.load_run(run_dir)
    run, metrics = record.run, record.metrics
    title = (f"Upload {record.model} [{record.unfreeze}] ({record.weights.label}): test accuracy "
             f"{metrics['accuracy']:.4f}, macro F1 {metrics['f1_macro']:.4f}")
    description = (f"From run folder `{run_dir.name}`: best epoch {run.get('best_epoch')} of {run.get('epochs_run')},"
                   f" validation accuracy {record.best_val_accuracy:.4f}, {metrics['num_samples']} test images.")
    return title, description


# ----------------------------------------------------------------------------------------------------------------
# Pushing
# ----------------------------------------------------------------------------------------------------------------
def check_repo_id(repo_id: str) -> str:
    """USER/NAME, valid for the Hub (checked locally, before anything is sent)."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    if not repo_id or repo_id.count("/") != 1 or not all(repo_id.split("/")):
        raise UserError(f"--repo-id {repo_id!r} must look like USER/NAME (or ORG/NAME)")
    try:
        validate_repo_id(repo_id)
    except HFValidationError as err:
        raise UserError(f"--repo-id {repo_id!r} is not a valid Hub repo id: {err}") from None
    return repo_id


def check_hub_access(token: str | None = None, timeout: float = 5.0) -> tuple[str, str]:
    """(token, user name), or a UserError within seconds: offline mode, no token, no network, bad token.

    huggingface_hub's own calls use an HTTP client without a timeout (and retries for uploads), so a dead network
    can hang a push for minutes; one short whoami probe up front makes every such case one clear error before
    anything is created remotely.
    """
    from huggingface_hub import constants, get_token
    from huggingface_hub.utils import build_hf_headers, get_session

    if constants.is_offline_mode():
        raise UserError("the Hub is off limits: HF_HUB_OFFLINE is set (unset it to push); nothing was uploaded")
    token = token or get_token()
    if not token:
        raise UserError("no Hugging Face token: set HF_TOKEN or run `hf auth login` (a token with write access); "
                        "nothing was uploaded")
    url = f"{constants.ENDPOINT}/api/whoami-v2"
    try:
        response = get_session().get(url, headers=build_hf_headers(token=token), timeout=timeout)
    except Exception as err:  # any transport failure (DNS, refused, timeout, proxy) means: no network
        raise UserError(f"cannot reach the Hub at {constants.ENDPOINT} ({type(err).__name__}: {err}); "
                        f"nothing was uploaded") from None
    if response.status_code == 401:
        raise UserError("the Hugging Face token was rejected (401): check HF_TOKEN or `hf auth login`; "
                        "nothing was uploaded")
    if response.status_code >= 400:
        raise UserError(f"the Hub answered {response.status_code} to {url}; nothing was uploaded")
    return token, response.json().get("name", "")


def push_folder(folder: Path, repo_id: str, *, token: str, private: bool, message: tuple[str, str],
                repo_type: str = "model") -> str:
    """create_repo (if needed) + upload_folder as one commit that mirrors the folder; returns the commit URL.

    repo_type "space" creates a Gradio Space (hub_extras.push_space)."""
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError

    api = HfApi(token=token)
    try:
        api.create_repo(repo_id, private=private, exist_ok=True, repo_type=repo_type,
                        space_sdk="gradio" if repo_type == "space" else None)
        # delete_patterns="*": files of an earlier push that this one lacks go in the same commit (.gitattributes
        # is always kept by huggingface_hub), so the repo shows exactly this run.
        info = api.upload_folder(repo_id=repo_id, folder_path=folder, commit_message=message[0],
                                 commit_description=message[1], delete_patterns="*", repo_type=repo_type)
    except Exception as err:
        if not (isinstance(err, (HfHubHTTPError, OSError)) or type(err).__module__.startswith("httpx")):
            raise  # a bug, not the Hub or the network: keep the traceback
        first_line = (str(err).splitlines() or [""])[0]
        raise UserError(f"push to {repo_id} failed ({type(err).__name__}: {first_line}); a Hub commit is "
                        f"all-or-nothing, so the repo holds no partial upload") from None
    return info.commit_url


@dataclass
class PushResult:
    repo_id: str
    folder: Path
    url: str | None  # commit URL; None for a dry run


def push_run(run_dir: str | Path, repo_id: str, *, private: bool = False, dry_run: str | Path | None = None,
             token: str | None = None, **card_kwargs) -> PushResult:
    """Push one run folder to `repo_id` in one commit, or (dry_run) only write the folder that would be uploaded."""
    run_dir = runs.require_complete(run_dir)
    repo_id = check_repo_id(repo_id)
    if dry_run is not None:
        return PushResult(repo_id, write_upload_folder(run_dir, dry_run, repo_id, **card_kwargs), None)
    token, _ = check_hub_access(token)
    with tempfile.TemporaryDirectory(prefix="hf_animals_push_") as tmp:
        folder = write_upload_folder(run_dir, Path(tmp) / "upload", repo_id, **card_kwargs)
        url = push_folder(folder, repo_id, token=token, private=private,
                          message=commit_message(run_dir))
    return PushResult(repo_id, Path(run_dir), url)


def study_best_runs(study_dir: str | Path) -> list[tuple[str, Path]]:
    """[(family, run folder)] for study.json's best run of each family (chosen by `runs.select_best`)."""
    study_dir = Path(study_dir)
    best = runs.read_json(study_dir / "study.json").get("best") or {}
    if not best:
        raise UserError(f"{study_dir}/study.json names no best runs: finish the study first")
    return [(family, study_dir / "runs" / name) for family, name in best.items()]


def study_repo_id(namespace: str, family: str, prefix: str = DEFAULT_REPO_PREFIX) -> str:
    return f"{namespace}/{prefix}{family.replace('_', '-')}"


def push_study(study_dir: str | Path, namespace: str, *, private: bool = False, dry_run: str | Path | None = None,
               token: str | None = None, repo_prefix: str = DEFAULT_REPO_PREFIX, **card_kwargs) -> list[PushResult]:
    """Push the best run of every family (one repo each); dry_run writes DRY_RUN/<repo name>/ for each instead.

    All run folders and cards are checked and built before the first upload, so a bad run stops the push early.
    """
    if not namespace or "/" in namespace:
        raise UserError(f"--namespace {namespace!r} must be a Hub user or organisation name")
    plan = []
    for family, run_dir in study_best_runs(study_dir):
        runs.require_complete(run_dir)
        plan.append((check_repo_id(study_repo_id(namespace, family, repo_prefix)), run_dir))
    if dry_run is not None:
        return [PushResult(repo_id, write_upload_folder(run_dir, Path(dry_run) / repo_id.split("/")[1], repo_id,
                                                        **card_kwargs), None)
                for repo_id, run_dir in plan]
    token, _ = check_hub_access(token)
    results = []
    with tempfile.TemporaryDirectory(prefix="hf_animals_push_") as tmp:
        folders = [write_upload_folder(run_dir, Path(tmp) / repo_id.split("/")[1], repo_id, **card_kwargs)
                   for repo_id, run_dir in plan]
        for (repo_id, run_dir), folder in zip(plan, folders):
            try:
                url = push_folder(folder, repo_id, token=token, private=private, message=commit_message(run_dir))
            except UserError as err:
                done = ", ".join(r.repo_id for r in results) or "none"
                raise UserError(f"{err} (already pushed: {done}; each repo is one commit, none is partial)") from None
            results.append(PushResult(repo_id, run_dir, url))
    return results
