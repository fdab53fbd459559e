"""The numbers of a study folder: its comparison rows and run records, and the findings computed from them.

Numbers only, no prose: the report's templates (`templates/report/`) turn these into sentences, and the report's
check cell recomputes the headline ones from the same files. Every "best" is `runs.select_best`, the rule the
study used to choose its sweep configuration and its best run per family, so the report cannot name another run.
"""
from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from pathlib import Path

from . import runs
from .dataset_info import DatasetInfo, describe_split
from .errors import UserError

#: "As good as the best" for the cost findings: within this many points of the best validation accuracy.
NEAR_BEST_PP = 2.0
#: A train-minus-validation accuracy gap (points) above which the report calls over-fitting clear.
CLEAR_OVERFIT_PP = 10.0
INT_COLUMNS = {"batch_size", "epochs", "best_epoch", "params_total", "params_trainable", "latency_threads"}
TEXT_COLUMNS = {"run", "stage", "family", "model", "regime", "weights"}
STUDY_FILES = ("study.json", "comparison.csv", "splits.csv")


@dataclass
class StudyData:
    root: Path
    meta: dict  # study.json
    rows: list[dict]  # comparison.csv, typed
    records: dict[str, runs.RunRecord]  # run name -> its record
    splits: list[dict]  # splits.csv rows
    dataset: DatasetInfo

    @property
    def finals(self) -> list[dict]:
        return [r for r in self.rows if r["stage"] == "final"]

    @property
    def sweep(self) -> list[dict]:
        return [r for r in self.rows if r["stage"] == "sweep"]

    @property
    def labels(self) -> dict[str, str]:
        """run name -> 'model [regime] (weights)', as the study labelled it."""
        labels = {r["run"]: r["label"] for r in self.meta.get("runs", [])}
        return {r["run"]: labels.get(r["run"], f"{r['model']} [{r['regime']}] ({r['weights']})") for r in self.rows}


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


def load_study(study_dir: str | Path, columns: tuple[str, ...] = ()) -> StudyData:
    """Everything the report needs; a missing or unfinished study is a UserError that says what to run.
    columns: those comparison.csv must have (the study's COMPARISON_COLUMNS)."""
    root = Path(study_dir)
    finish = f"run (or continue) the study first: python scripts/study.py --output-dir {root} ..."
    if not root.is_dir():
        raise UserError(f"study folder {root} does not exist; {finish}")
    for name in STUDY_FILES:
        if not (root / name).is_file():
            raise UserError(f"{root / name} is missing: the study in {root} is not complete; {finish}")
    meta = runs.read_json(root / "study.json")
    rows = read_comparison(root / "comparison.csv")
    missing_columns = set(columns) - set(rows[0] if rows else columns)
    if not rows or missing_columns:
        raise UserError(f"{root / 'comparison.csv'} has no runs or lacks columns {sorted(missing_columns)}; "
                        f"re-run the study to rewrite it")
    if not any(r["stage"] == "final" for r in rows):
        raise UserError(f"{root / 'comparison.csv'} has no final runs; {finish}")
    records = {}
    for row in rows:
        try:
            records[row["run"]] = runs.load_run(root / "runs" / row["run"])
        except UserError as err:
            raise UserError(f"{err}: the study is not complete; {finish}") from None
    with open(root / "splits.csv", newline="") as fh:
        splits = list(csv.DictReader(fh))
    dataset = (DatasetInfo.from_json(meta["dataset"]) if meta.get("dataset")
               else describe_split(splits, meta.get("config", {}).get("data_dir")))
    return StudyData(root, meta, rows, records, splits, dataset)


def pp(a: float, b: float) -> float:
    """Difference a - b of two accuracies in percentage points."""
    return 100.0 * (a - b)


def binomial_se(p: float, n: int) -> float:
    """Standard error of an accuracy p measured on n images (binomial): the noise floor of any comparison."""
    return math.sqrt(max(p * (1 - p), 0.0) / n) if n else float("nan")


def most_confused(cm, class_names) -> tuple[str, str, int] | None:
    """(true class, predicted class, count) of the largest off-diagonal cell of a confusion matrix."""
    if not cm or not class_names:
        return None
    count, i, j = max((cm[i][j], i, j) for i in range(len(cm)) for j in range(len(cm)) if i != j)
    return (class_names[i], class_names[j], count) if count else None


def compute_findings(data: StudyData) -> dict:
    """The headline numbers of the study, each taken from comparison.csv / the run records."""
    finals = data.finals
    selected = [r for r in finals if r["selected"]] or finals
    best = runs.select_best(selected)
    scratch = runs.select_best(r for r in selected if r["family"] == "scratch")
    best_transfer = runs.select_best(r for r in finals if data.records[r["run"]].weights.pretrained)
    record = data.records[best["run"]]
    n_test = int(record.metrics.get("num_samples") or 0)
    both = scratch is not None and best_transfer is not None
    return {
        "best": best, "scratch": scratch, "best_transfer": best_transfer,
        "offline": [r for r in finals if data.records[r["run"]].weights.kind == "offline"],
        "gap_test_pp": pp(best_transfer["test_accuracy"], scratch["test_accuracy"]) if both else None,
        "gap_val_pp": pp(best_transfer["best_val_accuracy"], scratch["best_val_accuracy"]) if both else None,
        "n_test": n_test, "se_test": binomial_se(best["test_accuracy"], n_test),
        "top_test": max(finals, key=lambda r: r["test_accuracy"]),
        "still_improving": [r for r in finals if r["best_epoch"] is not None and r["best_epoch"] == r["epochs"]],
        "regimes": regimes_by_family(finals),
        "best_sweep": runs.select_best(data.sweep), "sweep_edge": sweep_edge(data.sweep),
        "total_cost_s": sum(total_s(r) for r in data.rows),
        "total_cache_s": sum(r.get("cache_s") or 0.0 for r in data.rows),
        "head_vs_full": head_vs_full(finals, data.records),
        **cost_findings(finals, best), **fit_findings(record, best), **class_findings(record.metrics),
    }


def total_s(row: dict) -> float:
    """What a run cost: one-time caches + training (comparison.csv's total_s; `costs.cost_totals`)."""
    return row["total_s"] if row.get("total_s") is not None else row["train_time_s"] or 0.0


def cost_findings(finals: list[dict], best: dict) -> dict:
    """The cheapest (total time: caches + training) / most parameter-efficient runs, and the lightest one near the
    best (median batch-1 latency)."""
    near = [r for r in finals if pp(best["best_val_accuracy"], r["best_val_accuracy"]) <= NEAR_BEST_PP]
    with_latency = [r for r in near if r["latency_ms_per_image"] is not None]
    return {
        "cheapest_near": min(near, key=total_s),
        "fastest": min(finals, key=total_s),
        "per_param": max(finals, key=lambda r: r["test_accuracy"] / max(r["params_trainable"], 1)),
        "lightest_near": min(with_latency, key=lambda r: r["latency_ms_per_image"]) if with_latency else None,
    }


def head_vs_full(finals: list[dict], records: dict[str, runs.RunRecord]) -> list[dict]:
    """Per family with both: its head-only run against its run training the most parameters, on total time.

    A head-only run's few seconds of training rest on a one-time pass through the frozen backbone (its cache),
    so "head-only costs a fraction of fine-tuning" is only true - and only stated - when the totals say so.
    """
    out = []
    for family in dict.fromkeys(r["family"] for r in finals):
        rows = [r for r in finals if r["family"] == family]
        head = next((r for r in rows if records[r["run"]].head_only), None)
        full = max(rows, key=lambda r: r["params_trainable"])
        if head is not None and full is not head and total_s(full) > 0:
            out.append({"family": family, "head": head, "full": full, "fraction": total_s(head) / total_s(full)})
    return out


def fit_findings(record: runs.RunRecord, best: dict) -> dict:
    """Train and validation accuracy at the best run's best epoch, and their gap."""
    history = record.history
    at_best = next((h for h in history if h.get("epoch") == best["best_epoch"]), history[-1] if history else {})
    train, val = at_best.get("train_acc"), at_best.get("val_acc")
    gap = pp(train, val) if train is not None and val is not None else None
    return {"train_acc_at_best": train, "val_acc_at_best": val, "overfit_gap_pp": gap,
            "clear_overfit": gap is not None and gap > CLEAR_OVERFIT_PP}


def class_findings(metrics: dict) -> dict:
    """Hardest and easiest class (F1) and the most frequent confusion of one run's test metrics."""
    per_class = metrics.get("per_class", {})
    return {
        "per_class": per_class,
        "worst_class": min(per_class, key=lambda c: per_class[c]["f1"]) if per_class else None,
        "best_class": max(per_class, key=lambda c: per_class[c]["f1"]) if per_class else None,
        "confused": most_confused(metrics.get("confusion_matrix"), metrics.get("class_names")),
    }


def regimes_by_family(finals: list[dict]) -> dict[str, list[dict]]:
    """{family: its final rows by trainable parameters} for families with more than one regime."""
    regimes = {}
    for family in dict.fromkeys(r["family"] for r in finals):
        family_rows = sorted((r for r in finals if r["family"] == family), key=lambda r: r["params_trainable"])
        if len(family_rows) > 1:
            regimes[family] = family_rows
    return regimes


def sweep_edge(sweep: list[dict]) -> str | None:
    """'smallest' / 'largest' when the chosen sweep lr is at the edge of the grid (the optimum may lie outside)."""
    chosen = runs.select_best(sweep)
    lrs = sorted({r["lr"] for r in sweep})
    if chosen is None or len(lrs) < 2 or chosen["lr"] not in (lrs[0], lrs[-1]):
        return None
    return "smallest" if chosen["lr"] == lrs[0] else "largest"
