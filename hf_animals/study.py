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

from . import catalogue, checkpoints, costs, plots, preprocess, runs, training, weights
from . import data as hfdata
from . import locking
from .dataset_info import describe_split
from . import tracking
from .errors import UserError

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
    sweep_lrs: tuple[float, ...] | None = None  # None: around the scratch family's optimizer's default lr
    sweep_batch_sizes: tuple[int, ...] = (16, 32, 64)
    base_lr: float | None = None  # head lr of the transfer regimes; None: each family's optimizer's default lr
    batch_size: int = 32
    lr_overrides: dict[str, float] = field(default_factory=dict)  # "resnet18:all" -> lr of the head
    lr_auto: bool = False  # each final transfer run picks its head lr by a range test (lr_probe), once per regime
    image_size: int | None = None
    weights: str = "auto"  # auto: pretrained if they can be had, else random init labelled offline; hub: required;
    # none: every family from random init
    families: tuple[str, ...] = ("scratch", "resnet18", "mobilenetv2", "efficientnet_lite0")
    optimizer: str | None = None  # None: each family's own (catalogue.Family.optimizer)
    mixed_precision: str | None = "auto"  # precision.resolve_mixed_precision decides per run's device
    cache_dir: str | None = None
    progress: bool = True
    report_to: str | None = None  # tracking: as TrainConfig.report_to, for every run
    tracker_project: str | None = None  # tracking: None -> the study folder's name (one project, runs named by run)

    def __post_init__(self) -> None:
        if self.sweep_lrs is None:
            self.sweep_lrs = catalogue.OPTIMIZER_DEFAULTS[self.optimizer_of("scratch")].sweep_lrs

    def optimizer_of(self, family: str) -> str:
        """The optimizer of a family's runs: --optimizer when given, else the family's own."""
        return self.optimizer or catalogue.FAMILIES[family].optimizer

    def lr_of(self, regime: catalogue.Regime) -> float:
        """The head lr of a transfer regime's final run: --lr-override, else --lr, else its optimizer's default."""
        default = self.base_lr or catalogue.OPTIMIZER_DEFAULTS[self.optimizer_of(regime.family)].lr
        return self.lr_overrides.get(regime.name, default)

    @classmethod
    def quick(cls, **kwargs) -> "StudyConfig":
        """Minutes on a 2-core CPU: small images, few epochs, a 2 x 2 sweep (the two larger default lrs)."""
        optimizer = kwargs.get("optimizer") or catalogue.FAMILIES["scratch"].optimizer
        defaults = dict(epochs=6, sweep_epochs=3, sweep_lrs=catalogue.OPTIMIZER_DEFAULTS[optimizer].sweep_lrs[1:],
                        sweep_batch_sizes=(16, 32), image_size=64)
        return cls(**{**defaults, **kwargs})


@dataclass(frozen=True)
class RunSpec:
    """One run the study will train: a protocol row, its hyper-parameters and its starting weights."""

    name: str
    stage: str  # "sweep" or "final"
    regime: catalogue.Regime
    lr: float
    batch_size: int
    epochs: int
    pretrained: bool
    offline_fallback: bool = False  # pretrained weights were wanted but cannot be had: random init, labelled so


def sweep_specs(cfg: StudyConfig) -> list[RunSpec]:
    scratch = next(r for r in catalogue.PROTOCOL if r.family == "scratch")
    return [RunSpec(catalogue.run_name(scratch.model, "sweep", f"_lr{lr:g}_bs{bs}"), "sweep", scratch, lr, bs,
                    cfg.sweep_epochs, False)
            for lr, bs in itertools.product(cfg.sweep_lrs, cfg.sweep_batch_sizes)]


def weights_for(regime: catalogue.Regime, cfg: StudyConfig) -> tuple[bool, bool]:
    """(pretrained, offline_fallback) of a protocol row. A family whose weights cannot be had (offline, not cached,
    package missing) falls back to random init, recorded as such (catalogue.OFFLINE_SOURCE), unless weights='hub'
    asks for them explicitly: then it is an error, never a silent substitute."""
    if not catalogue.FAMILIES[regime.family].pretrained or cfg.weights == "none":
        return False, False
    if weights.hub_weights_available(regime.model):
        return True, False
    if cfg.weights == "hub":
        raise UserError(f"ImageNet weights for {regime.model} cannot be had (offline or not cached) and "
                        f"--weights hub was asked for; use --weights auto to run them from random init, labelled")
    return False, True


def final_specs(cfg: StudyConfig, scratch_lr: float, scratch_bs: int) -> list[RunSpec]:
    specs = []
    weights: dict[str, tuple[bool, bool]] = {}
    for regime in catalogue.PROTOCOL:
        if regime.family not in cfg.families:
            continue
        if regime.family not in weights:  # one probe per family
            weights[regime.family] = weights_for(regime, cfg)
        if regime.family == "scratch":
            lr, bs = scratch_lr, scratch_bs
        else:
            lr, bs = cfg.lr_of(regime), cfg.batch_size
        specs.append(RunSpec(regime.run_name, "final", regime, lr, bs, cfg.epochs, *weights[regime.family]))
    return specs


def train_config(spec: RunSpec, cfg: StudyConfig, manifest: Path) -> training.TrainConfig:
    return training.TrainConfig(
        model=spec.regime.model, unfreeze=spec.regime.unfreeze, data_dir=cfg.data_dir,
        output_dir=str(Path(cfg.output_dir) / "runs" / spec.name), splits=str(manifest), epochs=spec.epochs,
        batch_size=spec.batch_size, lr=spec.lr, backbone_lr_scale=spec.regime.backbone_lr_scale,
        optimizer=cfg.optimizer_of(spec.regime.family), image_size=cfg.image_size, augment=spec.regime.augment,
        pretrained=spec.pretrained,
        offline_fallback=spec.offline_fallback, seed=cfg.seed,
        lr_auto=cfg.lr_auto and spec.stage == "final" and catalogue.FAMILIES[spec.regime.family].pretrained,
        mixed_precision=cfg.mixed_precision, cache_dir=cfg.cache_dir, progress=cfg.progress,
        report_to=cfg.report_to, tracker_project=study_project(cfg))  # tracking


def study_project(cfg: StudyConfig) -> str:
    """The trackers' project of a study: every run of the study lands in it, named by its run folder."""
    return cfg.tracker_project or Path(cfg.output_dir).resolve().name


def run_spec(spec: RunSpec, cfg: StudyConfig, manifest: Path) -> runs.RunRecord:
    """Train one run unless it is already complete (an interrupted one resumes from its checkpoint); its record."""
    tcfg = train_config(spec, cfg, manifest)
    out = Path(tcfg.output_dir)
    if runs.is_complete(out):
        print(f"[study] {spec.name}: done, skipped")
        return runs.load_run(out)
    if checkpoints.has_checkpoint(out):
        print(f"[study] {spec.name}: resuming")
        tcfg.resume = True
    elif out.exists():
        tcfg.overwrite = True  # started but never finished one epoch: nothing worth keeping
    start = "pretrained" if spec.pretrained else catalogue.OFFLINE_SOURCE if spec.offline_fallback else "random init"
    print(f"[study] {spec.name}: {spec.regime.model} [{spec.regime.unfreeze}] ({start}), lr {spec.lr:g}, "
          f"batch {spec.batch_size}, {spec.epochs} epochs")
    training.train(tcfg)
    return runs.load_run(out)


def run_study(cfg: StudyConfig) -> Path:
    """Run (or continue) the whole study and write comparison.csv/.md, study.json and the figures."""
    out = Path(cfg.output_dir)
    known = sorted({r.family for r in catalogue.PROTOCOL})
    unknown = set(cfg.families) - set(known)
    if unknown:
        raise UserError(f"unknown famil(ies) {sorted(unknown)}; choose from {known}")
    tracking.resolve_trackers(cfg.report_to)  # a missing tracker fails before the study starts
    with locking.hold_folder(cfg.output_dir, what="study"):  # one study per folder; each run also locks its own
        return _run_locked_study(cfg, out)


def _run_locked_study(cfg: StudyConfig, out: Path) -> Path:
    manifest = study_manifest(cfg, out)

    sweep = sweep_specs(cfg) if "scratch" in cfg.families else []
    best_sweep = runs.select_best(comparison_row(spec, run_spec(spec, cfg, manifest)) for spec in sweep)
    scratch_lr, scratch_bs = ((best_sweep["lr"], best_sweep["batch_size"]) if best_sweep
                              else (catalogue.OPTIMIZER_DEFAULTS[cfg.optimizer_of("scratch")].lr, cfg.batch_size))
    finals = final_specs(cfg, scratch_lr, scratch_bs)
    for spec in finals:
        run_spec(spec, cfg, manifest)
    return write_study_outputs(cfg, [*sweep, *finals])


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
    "best_epoch", "test_accuracy", "test_accuracy_tta", "precision_macro", "recall_macro", "f1_macro", "train_time_s",
    "time_to_best_s", *costs.TIME_COLUMNS,  # cache_s, total_s
    "images_per_s", "peak_memory_mb", "params_total", "params_trainable", "checkpoint_mb", "latency_ms_per_image",
    *costs.LATENCY_COLUMNS,  # batch-1 spread, batch-32 median/spread/throughput, threads
    "selected",
)


def run_label(record: runs.RunRecord) -> str:
    """'resnet18 [fc] (random init (offline))': how tables and figures name a run, weights included."""
    return f"{record.model} [{record.unfreeze}] ({record.weights.label})"


def comparison_row(spec: RunSpec, record: runs.RunRecord, selected: bool = False) -> dict:
    """One row of comparison.csv, from the run's record: the plan (spec) and what training recorded."""
    m, run = record.metrics, record.run
    lr = (run.get("recipe") or {}).get("lr") or spec.lr  # the probed lr under --lr-auto
    return {
        "run": spec.name, "stage": spec.stage, "family": spec.regime.family, "model": record.model,
        "regime": record.unfreeze, "weights": record.weights.label, "lr": lr,
        "backbone_lr": None if record.head_only else lr * run["backbone_lr_scale"],
        "batch_size": spec.batch_size,
        "epochs": run["epochs_run"], "best_val_accuracy": record.best_val_accuracy, "best_epoch": run["best_epoch"],
        "test_accuracy": record.test_accuracy, "test_accuracy_tta": (m.get("tta") or {}).get("accuracy"),
        "precision_macro": m["precision_macro"],
        "recall_macro": m["recall_macro"], "f1_macro": m["f1_macro"], "train_time_s": run["train_time_s"],
        "time_to_best_s": run["time_to_best_s"], "images_per_s": run["images_per_s"],
        "peak_memory_mb": run["peak_memory_mb"], "params_total": run["params_total"],
        "params_trainable": run["params_trainable"], "checkpoint_mb": run["checkpoint_bytes"] / 2**20,
        "latency_ms_per_image": run["latency_ms_per_image"], "selected": selected,
        **costs.comparison_costs(run),  # cache/total s, latency median + spread, throughput, threads
    }


def write_study_outputs(cfg: StudyConfig, specs: list[RunSpec]) -> Path:
    """comparison.csv/.md, the figures and study.json of finished runs; the sweep's chosen configuration and the
    best run of each family are both `runs.select_best`, the rule the report and the model cards use."""
    out = Path(cfg.output_dir)
    records = {spec.name: runs.load_run(out / "runs" / spec.name) for spec in specs}
    rows = [comparison_row(spec, records[spec.name]) for spec in specs]
    best_sweep = runs.select_best(r for r in rows if r["stage"] == "sweep")
    best = {family: row["run"] for family, row in
            runs.best_by([r for r in rows if r["stage"] == "final"], "family").items()}
    for row in rows:
        row["selected"] = best.get(row["family"]) == row["run"]
    write_comparison(rows, out)
    labels = {name: run_label(record) for name, record in records.items()}
    write_figures(cfg, specs, records, rows, best, labels)
    study = {
        "config": dataclasses.asdict(cfg),
        "protocol": [{**dataclasses.asdict(r), "model": r.model, "head_only": r.head_only}
                     for r in catalogue.PROTOCOL],
        "selection_rule": runs.SELECTION_RULE,
        "sweep": [{"run": s.name, "lr": s.lr, "batch_size": s.batch_size} for s in specs if s.stage == "sweep"],
        "best_sweep": None if best_sweep is None else {k: best_sweep[k] for k in SWEEP_CHOICE_KEYS},
        "runs": [{"run": s.name, "stage": s.stage, "label": labels[s.name], "weights": records[s.name].weights.label,
                  **dataclasses.asdict(s.regime), "lr": s.lr, "batch_size": s.batch_size} for s in specs],
        "best": best,
        "dataset": describe_split(hfdata.read_manifest(out / "splits.csv", cfg.data_dir, verify=False),
                                  cfg.data_dir).to_json(),
    }
    (out / "study.json").write_text(json.dumps(study, indent=2))
    print(f"[study] comparison: {out / 'comparison.md'}")
    return out


SWEEP_CHOICE_KEYS = ("run", "lr", "batch_size", "best_val_accuracy", "train_time_s", "total_s")


def write_figures(cfg: StudyConfig, specs: list[RunSpec], records: dict[str, runs.RunRecord], rows: list[dict],
                  best: dict[str, str], labels: dict[str, str]) -> None:
    fig = Path(cfg.output_dir) / "figures"
    fig.mkdir(exist_ok=True)
    finals = [s for s in specs if s.stage == "final"]
    plots.plot_val_accuracy_overlay({labels[s.name]: records[s.name].history for s in finals},
                                    fig / "val_accuracy_all.png")
    sweep = [r for r in rows if r["stage"] == "sweep"]
    if sweep:
        chosen = runs.select_best(sweep)
        plots.plot_sweep_heatmap([{**r, "val_acc": r["best_val_accuracy"]} for r in sweep], fig / "sweep_heatmap.png",
                                 chosen=(chosen["lr"], chosen["batch_size"]))
    plots.plot_comparison_bars([{**r, "label": labels[r["run"]]} for r in rows if r["stage"] == "final"],
                               fig / "comparison_bars.png")
    for family, name in best.items():
        record = records[name]
        plots.plot_curves(record.history, fig / f"curves_best_{family}.png", title=f"best {family}: {labels[name]}")
        plots.plot_confusion_matrix(record.metrics["confusion_matrix"], record.metrics["class_names"],
                                    fig / f"confusion_best_{family}.png",
                                    title=f"{labels[name]}: test accuracy {record.test_accuracy:.3f}")
    write_sample_grid(cfg, Path(cfg.output_dir) / "splits.csv", fig / "samples_per_class.png")


def write_comparison(rows: list[dict], out: Path) -> None:
    with open(out / "comparison.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=COMPARISON_COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    (out / "comparison.md").write_text(comparison_markdown(rows))


MD_COLUMNS = (("run", "run"), ("weights", "weights"), ("lr", "lr"), ("backbone_lr", "backbone lr"),
              ("batch_size", "batch"),
              ("best_val_accuracy", "val acc"), ("best_epoch", "best ep."), ("test_accuracy", "test acc"),
              ("f1_macro", "macro F1"), ("train_time_s", "train s"), *costs.TIME_MD,  # cache s, total s
              ("time_to_best_s", "to best s"),
              ("images_per_s", "img/s"), ("peak_memory_mb", "peak MB"), ("params_trainable", "trainable"),
              ("params_total", "params"), ("checkpoint_mb", "ckpt MB"),
              *costs.LATENCY_MD)  # ms/img (b1) ± IQR, img/s (b32), threads


def comparison_markdown(rows: list[dict]) -> str:
    """A GitHub table; selected (best-by-validation) runs are bold."""
    lines = ["| " + " | ".join(h for _, h in MD_COLUMNS) + " |", "|" + "---|" * len(MD_COLUMNS)]
    for row in rows:
        cells = [_cell(row[key]) for key, _ in MD_COLUMNS]
        if row["selected"]:
            cells[0] = f"**{cells[0]}**"
        lines.append("| " + " | ".join(cells) + " |")
    note = "Bold: the best run of its family by validation accuracy. " + costs.COLUMN_NOTE
    return "\n".join(lines) + "\n\n" + note + "\n"


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
        images += [preprocess.load_rgb_resized(Path(cfg.data_dir) / r["path"], 96) for r in picks]
        titles += [name] * len(picks)
    return plots.plot_image_grid(images, titles, path, ncols=per_class, title="training images per class")
