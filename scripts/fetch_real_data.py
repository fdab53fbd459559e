#!/usr/bin/env python
"""Write a real 10-class image folder (Fashion-MNIST product photos, from Debian's dataset-fashion-mnist package).

    apt-get install dataset-fashion-mnist && python scripts/fetch_real_data.py data/fashion_mnist

The README's recipe measurements (scripts/recipe_bench.py) use this folder at 450 images per class (300/75/75).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

# Run from a checkout without install; drop scripts/ from the path so scripts/evaluate.py never shadows `evaluate`.
sys.path[0] = str(Path(__file__).resolve().parents[1])

from hf_animals import cli  # noqa: E402
from hf_animals.real_data import FASHION_MNIST_DIR, write_fashion_mnist  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("out_dir", help="folder to write (new, empty, or written by this script before)")
    p.add_argument("--per-class", type=cli.positive_int, default=450, help="images per class (default %(default)s)")
    p.add_argument("--source-dir", default=str(FASHION_MNIST_DIR),
                   help="where the package put the IDX files (default %(default)s)")
    args = p.parse_args(argv)
    out = write_fashion_mnist(args.out_dir, per_class=args.per_class, source_dir=args.source_dir)
    print(f"wrote 10 classes x {args.per_class} Fashion-MNIST images to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(cli.run_main(main))
