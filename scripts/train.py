#!/usr/bin/env python
"""Train one model/regime on an image folder: `accelerate launch scripts/train.py --model resnet18 --unfreeze fc ...`.

Runs the same under plain `python`, `accelerate launch` (GPUs, processes, precision from accelerate_config.yaml)
and `torchrun`. Exit code 2 with one `error:` line for any input problem.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

# Run from a checkout without install; drop scripts/ from the path so scripts/evaluate.py never shadows `evaluate`.
sys.path[0] = str(Path(__file__).resolve().parents[1])

from hf_animals import cli, precision, training  # noqa: E402


def build_parser() -> argparse.ArgumentParser:
    d = training.TrainConfig()
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    g = p.add_argument_group("data")
    g.add_argument("--data-dir", required=True, help="image folder, one sub-folder per class")
    g.add_argument("--splits", help="manifest from prepare_data.py (default: split here, saved in the run folder)")
    g.add_argument("--train", dest="train_per_class", type=cli.positive_int, default=d.train_per_class,
                   help="train images per class (when splitting here)")
    g.add_argument("--val", dest="val_per_class", type=cli.positive_int, default=d.val_per_class,
                   help="validation images per class: they choose the best epoch")
    g.add_argument("--test", dest="test_per_class", type=cli.positive_int, default=d.test_per_class,
                   help="test images per class: the reported accuracy")
    g.add_argument("--proportional", action="store_true", help="split small classes proportionally")
    g.add_argument("--skip-bad", action="store_true", help="skip unreadable images (listed) instead of failing")
    g.add_argument("--image-size", type=cli.positive_int, default=None,
                   help="square input size (default: the model's pretrained config)")
    g.add_argument("--no-augment", dest="augment", action="store_false", help="no training augmentation")
    g.add_argument("--cache-dir", help="decoded-image cache (default $HF_ANIMALS_CACHE or ~/.cache/hf_animals)")
    g.add_argument("--workers", dest="num_workers", type=cli.non_negative_int, default=d.num_workers,
                   help="DataLoader workers (0 suits the in-memory image cache)")
    g = p.add_argument_group("model")
    g.add_argument("--model", default=d.model,
                   help="animals_cnn5 | resnet18[.tag] | mobilenetv2_100[.tag] | tf_efficientnet_lite0 | "
                        "local-dir:DIR | hf-hub:USER/NAME")
    g.add_argument("--unfreeze", default=d.unfreeze, help="'all', 'head' or a comma list of top-level modules")
    g.add_argument("--no-pretrained", dest="pretrained", action="store_false", help="random init (explicit)")
    g.add_argument("--pretrained-file", help="local weights: .safetensors/.pth file or a folder saved by hf_animals")
    g.add_argument("--drop", dest="drop_rate", type=cli.fraction, default=None, help="classifier dropout")
    g = p.add_argument_group("optimisation")
    g.add_argument("--epochs", type=cli.positive_int, default=d.epochs)
    g.add_argument("--batch-size", "-b", type=cli.positive_int, default=d.batch_size)
    g.add_argument("--lr", type=_lr, default=None,
                   help="learning rate of the head (default: the optimizer's, 1e-3 AdamW / 0.01 SGD), or 'auto': a "
                        "range test on the training split picks it (figure lr_probe.png, choice in run.json)")
    g.add_argument("--lr-probe-steps", type=cli.positive_int, default=d.lr_probe_steps,
                   help="steps of the --lr auto range test")
    g.add_argument("--backbone-lr-scale", type=float, default=d.backbone_lr_scale,
                   help="unfrozen pretrained blocks learn at lr x this")
    g.add_argument("--optimizer", "--opt", choices=sorted(training.OPTIMIZERS), default=None,
                   help="default: the model family's (adamw for the scratch CNN, sgd for the pretrained families)")
    g.add_argument("--momentum", type=float, default=d.momentum)
    g.add_argument("--weight-decay", type=float, default=None,
                   help="default: the optimizer's (0.05 AdamW, 1e-4 SGD)")
    g.add_argument("--smoothing", dest="label_smoothing", type=cli.fraction, default=d.label_smoothing)
    g.add_argument("--sched", choices=["cosine", "step", "none"], default=d.sched)
    g.add_argument("--warmup-epochs", type=cli.non_negative_int, default=d.warmup_epochs)
    g.add_argument("--early-stopping", type=cli.non_negative_int, default=d.early_stopping,
                   help="stop after N epochs without val-accuracy gain (0: off)")
    g = p.add_argument_group("recipe")
    g.add_argument("--head-init-scale", type=cli.optional_float, default=d.head_init_scale,
                   help="a new classifier's initial weights x this (0: zeros); 'none': the architecture's init")
    g.add_argument("--head-init-bias", type=cli.optional_float, default=d.head_init_bias,
                   help="a new classifier's initial bias; 'none': the architecture's init")
    g.add_argument("--ema", action="store_true",
                   help="validate an exponential moving average of the weights too; the better one is saved")
    g.add_argument("--ema-decay", type=cli.fraction, default=None,
                   help="EMA decay (default: averages the last tenth of the run)")
    g.add_argument("--mixup", type=float, default=d.mixup, help="Mixup alpha, e.g. 0.8 (0: off)")
    g.add_argument("--cutmix", type=float, default=d.cutmix, help="CutMix alpha, e.g. 1.0 (0: off)")
    g = p.add_argument_group("run")
    g.add_argument("--output-dir", required=True, help="run folder")
    g.add_argument("--seed", type=int, default=d.seed)
    g.add_argument("--mixed-precision", choices=precision.CHOICES, default=d.mixed_precision,
                   help="auto: bf16 on CPUs/GPUs with native bf16, fp16 on older GPUs, else fp32; a launcher's "
                        "fp16/bf16 (accelerate launch --mixed_precision) wins over auto (default %(default)s)")
    g.add_argument("--no-feature-cache", dest="feature_cache", action="store_false",
                   help="always run the frozen prefix (the cache is exact; this is for benchmarking)")
    g.add_argument("--no-channels-last", dest="channels_last", action="store_false")
    g.add_argument("--compile", action="store_true", help="torch.compile the trained module")
    g.add_argument("--resume", action="store_true", help="continue an interrupted run in --output-dir")
    g.add_argument("--overwrite", action="store_true", help="replace an existing run in --output-dir")
    g.add_argument("--no-progress", dest="progress", action="store_false")
    cli.add_tracking_arguments(p)
    return p


def _lr(text: str) -> float | str:
    return "auto" if text.strip().lower() == "auto" else cli.positive_float(text)


def main(argv: list[str] | None = None) -> int:
    args = vars(build_parser().parse_args(argv))
    lr_auto = args["lr"] == "auto"
    summary = training.train(training.TrainConfig(**{**args, "lr": training.TrainConfig.lr if lr_auto else args["lr"],
                                                     "lr_auto": lr_auto}))
    if summary:
        print(f"best val accuracy {summary['best_val_accuracy']:.4f} (epoch {summary['best_epoch']}), "
              f"test accuracy {summary['test_accuracy']:.4f} (with TTA {summary['test_accuracy_tta']:.4f}); "
              f"run folder {args['output_dir']}")
    return 0


if __name__ == "__main__":
    sys.exit(cli.run_main(main))
