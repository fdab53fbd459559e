#!/usr/bin/env python
"""Write a synthetic 10-class image folder in Animals-10's layout (one sub-folder per class).

Classes are shape families with overlapping colours and textures at random position, scale and rotation on noisy,
cluttered backgrounds; files are mixed JPEG/PNG, RGB/RGBA/greyscale/palette, of varied sizes. Same seed, same bytes.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

# Run from a checkout without install; drop scripts/ from the path so scripts/evaluate.py never shadows `evaluate`.
sys.path[0] = str(Path(__file__).resolve().parents[1])

from hf_animals import cli  # noqa: E402
from hf_animals.sample_data import write_sample_dataset  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("out_dir", help="folder to write (must be new, empty, or written by this script before)")
    p.add_argument("--classes", type=cli.positive_int, default=10, help="number of classes, 1-10 (default %(default)s)")
    p.add_argument("--per-class", type=cli.positive_int, default=60, help="images per class (default %(default)s)")
    p.add_argument("--size", type=cli.positive_int, default=96,
                   help="typical image side in pixels; actual sizes vary about 0.8-1.6x (default %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default %(default)s)")
    p.add_argument("--italian", action="store_true",
                   help="use Animals-10's original Italian folder names (cane, cavallo, ...)")
    args = p.parse_args(argv)
    out = write_sample_dataset(args.out_dir, classes=args.classes, per_class=args.per_class, size=args.size,
                               seed=args.seed, italian=args.italian)
    print(f"wrote {args.classes} classes x {args.per_class} images to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(cli.run_main(main))
