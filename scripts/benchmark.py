#!/usr/bin/env python
"""Time a naive loop (torchvision ImageFolder, decode + full forward every epoch) against hf_animals, per regime.

Same data, machine, seed and epochs for both; checks that their accuracies agree and prints per-regime epoch-time
ratios, the one-time cache cost, the data-wait fraction of step time and a whole-study projection.
`--json OUT` writes the same figures. Without --data-dir, sample images are generated in the work folder.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

# Run from a checkout without install; drop scripts/ from the path so scripts/evaluate.py never shadows `evaluate`.
sys.path[0] = str(Path(__file__).resolve().parents[1])

from hf_animals import benchmark, catalogue, cli, precision  # noqa: E402


def build_parser() -> argparse.ArgumentParser:
    d = benchmark.BenchmarkConfig()
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--data-dir", help="image folder, one sub-folder per class (default: generated sample images)")
    p.add_argument("--work-dir", help="keeps the split, caches and run folders (default: a temporary folder)")
    p.add_argument("--per-class", type=cli.positive_int, default=d.per_class, help="training images per class")
    p.add_argument("--val-per-class", type=cli.positive_int, default=None,
                   help="validation images per class (default: max(2, per-class // 4))")
    p.add_argument("--source-size", type=cli.positive_int, default=d.source_size,
                   help="short side of generated sample images, and of the JPEG copies timed instead of a "
                        "--data-dir whose images are much smaller (under half of it)")
    p.add_argument("--images-as-is", action="store_true",
                   help="time a --data-dir's own files even when they are much smaller than photos")
    p.add_argument("--image-size", type=cli.positive_int, default=d.image_size)
    p.add_argument("--epochs", type=cli.positive_int, default=d.epochs)
    p.add_argument("--batch-size", type=cli.positive_int, default=d.batch_size)
    p.add_argument("--lr", type=cli.positive_float, default=d.lr,
                   help="head lr of every run (default: each family's optimizer's, as training uses)")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--regimes", nargs="+", default=list(d.regimes), metavar="MODEL:UNFREEZE",
                   help=f"any of: {' '.join(catalogue.REGIMES)}")
    p.add_argument("--mixed-precision", choices=precision.CHOICES, default=d.mixed_precision,
                   help="the hf_animals side (auto: bf16 where the hardware has it); the naive baseline is always fp32")
    p.add_argument("--workers", type=cli.non_negative_int, default=None,
                   help="DataLoader workers for both pipelines (default: 0 for the cache, for the naive path "
                        "min(4, cores) on a GPU)")
    p.add_argument("--augment-batches", type=cli.non_negative_int, default=d.augment_batches,
                   help="length of the augmentation probe for regimes the study augments (0: skip)")
    p.add_argument("--threads", type=cli.positive_int, default=None,
                   help="torch CPU threads (default: torch's); on a shared CPU use the number of free cores")
    p.add_argument("--json", type=Path, help="write the figures here")
    p.add_argument("--quiet", action="store_true", help="no per-run progress lines")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    cfg = benchmark.BenchmarkConfig(
        data_dir=args.data_dir, work_dir=args.work_dir, per_class=args.per_class, val_per_class=args.val_per_class,
        source_size=args.source_size, photo_sized=not args.images_as_is, image_size=args.image_size,
        epochs=args.epochs, batch_size=args.batch_size,
        lr=args.lr, seed=args.seed, regimes=tuple(args.regimes), mixed_precision=args.mixed_precision,
        num_workers=args.workers, threads=args.threads, augment_batches=args.augment_batches, progress=not args.quiet)
    result = benchmark.run_benchmark(cfg)
    print(benchmark.format_report(result))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n")
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(cli.run_main(main))
