"""Experiment tracking through Accelerate's trackers: TensorBoard, trackio, Weights & Biases, MLflow.

The training loop talks to one `RunTracker`; Accelerate does the talking to each tracker
(`Accelerator(log_with=..., project_config=...)` -> `init_trackers` -> `log`), so every tracker sees the same numbers:

- the run's hyper-parameters (flat scalars, None dropped: TensorBoard's hparams plugin rejects None),
- per step: the training loss and learning rate(s), collected on the device and sent once per epoch, so tracking adds
  one host sync per epoch and none per step,
- per epoch: every numeric column of history.json (`epoch/<column>`), at the global step that ends the epoch,
- at the end: the test metrics (`test/<metric>`), the run summary (`summary/<key>`), and the confusion matrix and
  curves as images where the tracker takes images.

Where the numbers land: TensorBoard event files in RUN/tb/<project>/ (beside the run's other files, offline);
trackio in its local store ($TRACKIO_DIR, default ~/.cache/huggingface/trackio); wandb and mlflow wherever their own
settings say (WANDB_MODE, MLFLOW_TRACKING_URI). A study names its project after the study and each run after its
folder, so one dashboard shows every run of the study.
"""
from __future__ import annotations

import importlib.util
import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .errors import UserError

TRACKERS = ("tensorboard", "trackio", "wandb", "mlflow")  # Accelerate's names, as in the HF examples' --report_to
REPORT_TO_CHOICES = ("none", *TRACKERS, "all")
DEFAULT_TRACKER = "tensorboard"  # used when --report-to is not given and TensorBoard is installed (see README)
DEFAULT_PROJECT = "hf_animals"
TB_DIR = "tb"  # TensorBoard's folder inside a run folder
SUMMARY_KEYS = ("best_val_accuracy", "best_epoch", "epochs_run", "train_time_s", "time_to_best_s", "images_per_s",
                "peak_memory_mb", "params_total", "params_trainable", "checkpoint_bytes")
RUN_IMAGES = ("curves.png", "confusion_matrix.png")


def parse_report_to(text: str | None) -> tuple[str, ...] | None:
    """The tracker names in `--report-to` ('none', one name, 'all' or a comma list); None stays None (the default).

    Only the spelling is checked here: a run folder records its trackers and must stay loadable (evaluate, push) on
    a machine without them.
    """
    if text is None:
        return None
    names = tuple(dict.fromkeys(n.strip() for n in str(text).split(",") if n.strip()))
    unknown = [n for n in names if n not in REPORT_TO_CHOICES]
    if unknown or not names:
        raise UserError(f"unknown --report-to {', '.join(unknown) or repr(text)}; choose from "
                        f"{', '.join(REPORT_TO_CHOICES)} (or a comma list)")
    if len(names) > 1 and ({"none", "all"} & set(names)):
        raise UserError(f"--report-to {text}: 'none' and 'all' cannot be combined with other trackers")
    return names


def is_installed(tracker: str) -> bool:
    return importlib.util.find_spec(tracker) is not None  # each tracker's import name is its pip name


def resolve_trackers(report_to: str | None) -> list[str]:
    """The trackers to start: what was asked, each checked to be installed (a clear error otherwise).

    Default (None): TensorBoard when installed, else nothing; the default never fails. 'all': every installed one
    of TRACKERS, as in the HF examples.
    """
    names = parse_report_to(report_to)
    if names is None:
        return [DEFAULT_TRACKER] if is_installed(DEFAULT_TRACKER) else []
    if names == ("none",):
        return []
    if names == ("all",):
        return [t for t in TRACKERS if is_installed(t)]
    missing = [t for t in names if not is_installed(t)]
    if missing:
        raise UserError(f"--report-to {','.join(names)}: {' and '.join(missing)} not installed "
                        f"(pip install {' '.join(missing)})")
    return list(names)


def accelerator_kwargs(report_to: str | None, run_dir: str | Path) -> dict:
    """`Accelerator(**kwargs)` arguments that enable the trackers; {} when tracking is off.

    The logging directory is RUN/tb, so TensorBoard writes RUN/tb/<project>/ and `tensorboard --logdir STUDY`
    finds every run of a study.
    """
    trackers = resolve_trackers(report_to)
    if not trackers:
        return {}
    from accelerate.utils import ProjectConfiguration

    run_dir = Path(run_dir)
    return {"log_with": trackers,
            "project_config": ProjectConfiguration(project_dir=str(run_dir), logging_dir=str(run_dir / TB_DIR))}


def flat_hparams(config: Mapping[str, Any], prefix: str = "") -> dict[str, bool | int | float | str]:
    """Hyper-parameters as every tracker takes them: flat keys, scalar values, None dropped.

    Nested mappings become `outer.inner` keys; lists, tuples and other objects become strings (TensorBoard's hparams
    plugin accepts only bool, number and string, and rejects None).
    """
    flat: dict[str, bool | int | float | str] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if value is None:
            continue
        if isinstance(value, Mapping):
            flat.update(flat_hparams(value, prefix=f"{name}."))
        elif isinstance(value, (bool, int, float, str)):
            flat[name] = value
        elif isinstance(value, (list, tuple)):
            flat[name] = json.dumps(value, default=str)
        else:
            flat[name] = str(value)
    return flat


def _scalars(values: Mapping[str, Any], prefix: str, keys=None) -> dict[str, float]:
    """Numeric, finite entries of `values` (all, or just `keys`) as `prefix/key` -> float."""
    picked = {}
    for key in keys or values:
        value = values.get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            picked[f"{prefix}/{key}"] = float(value)
    return picked


class RunTracker:
    """One run's connection to the trackers started on `accelerator`; every method is a no-op when there are none.

    Trackers log on the main process only (Accelerate's rule), so everything that costs time is skipped elsewhere.
    """

    def __init__(self, accelerator, steps_per_epoch: int):
        self.accelerator = accelerator
        self.steps_per_epoch = steps_per_epoch
        self.active = bool(getattr(accelerator, "log_with", None)) and accelerator.is_main_process
        self._losses: list = []  # this epoch's step losses, still on the device
        self._lrs: list[list[float]] = []
        self._group_names: list[str] = []

    @classmethod
    def start(cls, accelerator, *, project: str | None, run_name: str, config: Mapping[str, Any],
              steps_per_epoch: int, resume: bool = False) -> "RunTracker":
        """`init_trackers` with the flat hyper-parameters; the run is named `run_name` in every tracker."""
        tracker = cls(accelerator, steps_per_epoch)
        if getattr(accelerator, "log_with", None):
            init_kwargs = {
                "trackio": {"name": run_name, "resume": "allow" if resume else "never"},
                "wandb": {"name": run_name, "dir": str(Path(accelerator.project_dir or "."))},
                "mlflow": {"run_name": run_name},
            }
            accelerator.init_trackers(project or DEFAULT_PROJECT, config=flat_hparams(config),
                                      init_kwargs=init_kwargs)
        return tracker

    def global_step(self, epoch: int, step_in_epoch: int = 0) -> int:
        """Optimizer steps done after `step_in_epoch` steps of `epoch` (1-based): the x axis of every curve."""
        return (epoch - 1) * self.steps_per_epoch + step_in_epoch

    def record_step(self, loss, optimizer) -> None:
        """Keep this step's loss (a device tensor: no sync) and learning rates (host floats) for `log_epoch`."""
        if self.active:
            self._losses.append(loss.detach())
            self._lrs.append([group["lr"] for group in optimizer.param_groups])
            if not self._group_names:
                self._group_names = [group.get("name", str(i)) for i, group in enumerate(optimizer.param_groups)]

    def log_epoch(self, epoch: int, row: Mapping[str, Any]) -> None:
        """The epoch's step losses and lrs (one device->host copy), then its history row at the epoch's last step."""
        if not self.active:
            return
        import torch

        first = self.global_step(epoch)
        losses = torch.stack(self._losses).float().cpu().tolist() if self._losses else []
        for i, (loss, lrs) in enumerate(zip(losses, self._lrs), start=1):
            self.accelerator.log({"step/loss": loss, **self._lr_scalars(lrs)}, step=first + i)
        self._losses, self._lrs = [], []
        self.accelerator.log(_scalars(row, "epoch"), step=self.global_step(epoch, self.steps_per_epoch))

    def _lr_scalars(self, lrs: list[float]) -> dict[str, float]:
        """`step/lr` (the head's, the schedule of --lr) plus `step/lr_backbone` when unfrozen backbone layers have
        their own, scaled rate."""
        out = {"step/lr": lrs[0]}
        for name, lr in zip(self._group_names, lrs):
            if name.startswith("backbone"):
                out["step/lr_backbone"] = lr
                break
        return out

    def log_final(self, epochs_run: int, metrics: Mapping[str, Any], summary: Mapping[str, Any],
                  run_dir: str | Path) -> None:
        """Test metrics, the run summary and the run's figures, at the last step."""
        if not self.active:
            return
        step = self.global_step(epochs_run, self.steps_per_epoch)
        self.accelerator.log({**_scalars(metrics, "test"), **_scalars(summary, "summary", SUMMARY_KEYS)}, step=step)
        self.log_images({Path(name).stem: Path(run_dir) / name for name in RUN_IMAGES
                         if (Path(run_dir) / name).is_file()}, step)

    def log_images(self, images: Mapping[str, Path], step: int) -> None:
        """PNG files as images, in each tracker's own image type (TensorBoard, trackio, wandb; mlflow: artifacts)."""
        if not self.active or not images:
            return
        for tracker in self.accelerator.trackers:
            log = IMAGE_LOGGERS.get(tracker.name)
            if log is not None:
                log(tracker, images, step)

    def finish(self) -> None:
        """Close every tracker (flushes files; trackio uploads nothing when local).

        Not `accelerator.end_training()`: that also destroys the process group, which the next run of a study in
        the same processes still needs.
        """
        for tracker in getattr(self.accelerator, "trackers", []):
            tracker.finish()
        if getattr(self.accelerator, "trackers", None):
            self.accelerator.trackers.clear()
        self.active = False


def _tensorboard_images(tracker, images: Mapping[str, Path], step: int) -> None:
    import numpy as np
    from PIL import Image

    for tag, path in images.items():
        with Image.open(path) as im:
            tracker.writer.add_image(f"figures/{tag}", np.asarray(im.convert("RGB")), step, dataformats="HWC")
    tracker.writer.flush()


def _trackio_images(tracker, images: Mapping[str, Path], step: int) -> None:
    import trackio

    tracker.log({f"figures/{tag}": trackio.Image(str(path)) for tag, path in images.items()}, step=step)


def _wandb_images(tracker, images: Mapping[str, Path], step: int) -> None:
    import wandb

    tracker.log({f"figures/{tag}": wandb.Image(str(path)) for tag, path in images.items()}, step=step)


def _mlflow_images(tracker, images: Mapping[str, Path], step: int) -> None:
    import mlflow

    for path in images.values():
        mlflow.log_artifact(str(path), artifact_path="figures")


IMAGE_LOGGERS = {"tensorboard": _tensorboard_images, "trackio": _trackio_images, "wandb": _wandb_images,
                 "mlflow": _mlflow_images}


# ----------------------------------------------------------------------------------------------------------------
# Reading TensorBoard files back (tests, README figures)
# ----------------------------------------------------------------------------------------------------------------
def tensorboard_dirs(run_dir: str | Path) -> list[Path]:
    """Every folder under RUN/tb holding event files (the scalars' folder and the hparams' sub-folder)."""
    root = Path(run_dir) / TB_DIR
    return sorted({p.parent for p in root.rglob("events.out.tfevents.*")}) if root.is_dir() else []


def tensorboard_scalars(run_dir: str | Path) -> dict[str, list[tuple[int, float]]]:
    """tag -> [(step, value), ...] in step order, from the run's TensorBoard event files."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    scalars: dict[str, list[tuple[int, float]]] = {}
    for folder in tensorboard_dirs(run_dir):
        acc = EventAccumulator(str(folder), size_guidance={"scalars": 0, "images": 0}).Reload()
        for tag in acc.Tags()["scalars"]:
            scalars.setdefault(tag, []).extend((e.step, e.value) for e in acc.Scalars(tag))
    return {tag: sorted(points) for tag, points in scalars.items()}


def tensorboard_hparams(run_dir: str | Path) -> dict[str, bool | float | str]:
    """The hyper-parameters TensorBoard's HPARAMS tab shows for the run."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import metadata as hp_metadata
    from tensorboard.plugins.hparams import plugin_data_pb2

    hparams: dict[str, bool | float | str] = {}
    for folder in tensorboard_dirs(run_dir):
        acc = EventAccumulator(str(folder)).Reload()
        try:
            start = acc.PluginTagToContent(hp_metadata.PLUGIN_NAME)[hp_metadata.SESSION_START_INFO_TAG]
        except KeyError:  # the scalars' folder: add_hparams writes into a sub-folder of its own
            continue
        info = plugin_data_pb2.HParamsPluginData.FromString(start).session_start_info
        for name, value in info.hparams.items():
            hparams[name] = getattr(value, value.WhichOneof("kind"))
    return hparams
