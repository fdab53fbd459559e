#!/usr/bin/env python
"""Re-evaluate a saved run's best checkpoint on a split: metrics JSON, confusion matrix, misclassified grid.

Usage: evaluate.py RUN [--split val]; several processes: torchrun --nproc_per_node N scripts/evaluate.py RUN.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

# Run from a checkout without install; drop scripts/ from the path so scripts/evaluate.py never shadows `evaluate`.
sys.path[0] = str(Path(__file__).resolve().parents[1])

from hf_animals import cli, evaluation, precision  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    # Positional, so `torchrun ... scripts/evaluate.py RUN` works: torchrun's own parser takes `--run` for its
    # `--run-path` ("ambiguous option"). `--run RUN` stays for plain `python`.
    p.add_argument("run", nargs="?", metavar="RUN", help="run folder written by train.py")
    p.add_argument("--run", dest="run_option", metavar="RUN", help="the same, as an option (not under torchrun)")
    p.add_argument("--split", choices=["train", "val", "test"], default="test")
    p.add_argument("--data-dir", help="image folder, if it moved since training")
    p.add_argument("--mixed-precision", choices=precision.CHOICES, default="auto",
                   help="inference autocast; auto: bf16 where the CPU/GPU has it natively (default %(default)s)")
    p.add_argument("--tta", action="store_true",
                   help="also report test-time augmentation (image + mirror image, mean softmax), beside the plain numbers")
    args = p.parse_args(argv)
    if (args.run is None) == (args.run_option is None):
        p.error("give the run folder once: evaluate.py RUN (or --run RUN)")
    m = evaluation.evaluate_run(args.run or args.run_option, args.split, data_dir=args.data_dir,
                                mixed_precision=args.mixed_precision, tta=args.tta)
    print(f"{args.split} (mixed precision {m['mixed_precision']}): accuracy {m['accuracy']:.4f}  "
          f"precision {m['precision_macro']:.4f}  recall {m['recall_macro']:.4f}  f1 {m['f1_macro']:.4f}  "
          f"({m['num_samples']} images)")
    if "tta" in m:
        t = m["tta"]
        print(f"{args.split} with TTA ({t['views']}): accuracy {t['accuracy']:.4f}  f1 {t['f1_macro']:.4f}")
    print(json.dumps({k: v["f1"] for k, v in m["per_class"].items()}, indent=None))
    return 0


if __name__ == "__main__":
    sys.exit(cli.run_main(main))
