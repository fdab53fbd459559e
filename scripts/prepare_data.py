#!/usr/bin/env python
"""Check an image folder (one sub-folder per class) and write the split manifest, splits.csv.

Exact per-class counts chosen by --seed; Animals-10's Italian folder names become English labels; hidden files and
non-images are ignored; corrupt files, empty or too-small classes are errors (exit code 2). An existing manifest in
--output-dir is verified and reused, so every model of a study uses the same images.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

# Run from a checkout without install; drop scripts/ from the path so scripts/evaluate.py never shadows `evaluate`.
sys.path[0] = str(Path(__file__).resolve().parents[1])

from hf_animals import cli, data  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--data-dir", required=True, help="image folder with one sub-folder per class")
    p.add_argument("--output-dir", required=True, help="where splits.csv (+ splits.json) is written")
    p.add_argument("--train", type=cli.positive_int, default=300, help="train images per class (default %(default)s)")
    p.add_argument("--val", type=cli.non_negative_int, default=75,
                   help="validation images per class (default %(default)s)")
    p.add_argument("--test", type=cli.non_negative_int, default=75, help="test images per class (default %(default)s)")
    p.add_argument("--seed", type=int, default=42, help="seed of the split (default %(default)s)")
    p.add_argument("--proportional", action="store_true",
                   help="split a class smaller than train+val+test in the same ratio instead of failing")
    p.add_argument("--skip-bad", action="store_true", help="leave out unreadable images (listed) instead of failing")
    p.add_argument("--overwrite", action="store_true", help="make a new split even if --output-dir has one")
    args = p.parse_args(argv)
    manifest = data.prepare_splits(args.data_dir, args.output_dir, train=args.train, val=args.val, test=args.test,
                                   seed=args.seed, proportional=args.proportional, skip_bad=args.skip_bad,
                                   reuse=not args.overwrite)
    print(data.split_table(data.read_manifest(manifest, args.data_dir, verify=False)))
    print(f"manifest: {manifest}")
    return 0


if __name__ == "__main__":
    sys.exit(cli.run_main(main))
