#!/usr/bin/env python
"""Run the whole study: scratch-CNN lr x batch sweep, its final run, ResNet-18 / MobileNetV2 / EfficientNet-Lite0
regimes, then comparison.csv/.md and figures. Re-running the same command continues an interrupted study.

`accelerate launch scripts/study.py ...` runs every training run on the processes/devices/precision that Accelerate
is configured for.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

# Run from a checkout without install; drop scripts/ from the path so scripts/evaluate.py never shadows `evaluate`.
sys.path[0] = str(Path(__file__).resolve().parents[1])

from hf_animals import catalogue, cli, precision, study  # noqa: E402
from hf_animals.errors import UserError  # noqa: E402


def lr_override(text: str) -> tuple[str, float]:
    try:
        key, value = text.split("=")
        return key, cli.positive_float(value)
    except (ValueError, argparse.ArgumentTypeError):
        raise argparse.ArgumentTypeError(f"expected MODEL:REGIME=LR (e.g. resnet18:all=0.002), got {text!r}") from None


def main(argv: list[str] | None = None) -> int:
    d = study.StudyConfig(data_dir="", output_dir="")
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--data-dir", required=True)
    p.add_argument("--output-dir", required=True, help="study folder")
    p.add_argument("--splits", help="manifest from prepare_data.py (default: split once here)")
    p.add_argument("--train", dest="train_per_class", type=cli.positive_int, default=d.train_per_class)
    p.add_argument("--val", dest="val_per_class", type=cli.positive_int, default=d.val_per_class)
    p.add_argument("--test", dest="test_per_class", type=cli.positive_int, default=d.test_per_class)
    p.add_argument("--quick", action="store_true", help="few epochs, 64 px images, 2x2 sweep: a demo in minutes")
    p.add_argument("--epochs", type=cli.positive_int, help=f"final runs (default {d.epochs}; quick 6)")
    p.add_argument("--sweep-epochs", type=cli.positive_int, help=f"default {d.sweep_epochs}; quick 3")
    lrs = "; ".join(f"{name} {' '.join(f'{lr:g}' for lr in o.sweep_lrs)}"
                    for name, o in catalogue.OPTIMIZER_DEFAULTS.items())
    p.add_argument("--sweep-lrs", type=cli.positive_float, nargs="+",
                   help=f"scratch CNN sweep (default: around its optimizer's lr: {lrs}; quick: the two larger)")
    p.add_argument("--sweep-batch-sizes", type=cli.positive_int, nargs="+", help=f"default {d.sweep_batch_sizes}")
    scales = "; ".join(f"{r.name} x{r.backbone_lr_scale:g}" for r in catalogue.PROTOCOL
                       if catalogue.FAMILIES[r.family].pretrained and not r.head_only)
    p.add_argument("--lr", dest="base_lr", type=cli.positive_float, default=None,
                   help=f"head lr of transfer regimes (default: their optimizer's, 0.01 SGD / 1e-3 AdamW); unfrozen "
                        f"pretrained layers get lr x scale ({scales})")
    p.add_argument("--lr-auto", action="store_true",
                   help="each transfer regime's final run picks its head lr by a range test (lr_probe.png, run.json)")
    p.add_argument("--lr-override", type=lr_override, action="append", default=[], metavar="MODEL:REGIME=LR")
    p.add_argument("--batch-size", type=cli.positive_int, default=d.batch_size, help="transfer regimes")
    p.add_argument("--image-size", type=cli.positive_int, help="default: each model's own (quick: 64)")
    p.add_argument("--weights", choices=["auto", "hub", "none"], default=d.weights,
                   help="auto: pretrained weights if they can be had, else random init labelled "
                        f"'{catalogue.OFFLINE_SOURCE}'; hub: required; none: random init for every family")
    p.add_argument("--families", nargs="+", default=list(d.families), help="subset of the protocol's families")
    p.add_argument("--optimizer", choices=["sgd", "adamw"], default=None,
                   help="every run's optimizer (default: each family's: adamw for the scratch CNN, sgd otherwise)")
    p.add_argument("--mixed-precision", choices=precision.CHOICES, default=d.mixed_precision,
                   help="auto: bf16 on CPUs/GPUs with native bf16, fp16 on older GPUs, else fp32 (default %(default)s)")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--cache-dir")
    p.add_argument("--no-progress", dest="progress", action="store_false")
    cli.add_tracking_arguments(p, project_default="the study folder's name; each run is named by its folder")
    args = vars(p.parse_args(argv))
    quick = args.pop("quick")
    overrides = dict(args.pop("lr_override"))
    for key in ("sweep_lrs", "sweep_batch_sizes", "families"):
        if args[key] is not None:
            args[key] = tuple(args[key])
    given = {k: v for k, v in args.items() if v is not None}
    cfg = (study.StudyConfig.quick if quick else study.StudyConfig)(lr_overrides=overrides, **given)
    if cfg.epochs < 1 or cfg.sweep_epochs < 1:
        raise UserError("--epochs and --sweep-epochs must be >= 1")
    out = study.run_study(cfg)
    print((out / "comparison.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(cli.run_main(main, resume_flag=None))  # the same command continues a study
