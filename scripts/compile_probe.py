#!/usr/bin/env python
"""Eager vs `torch.compile` training-step time per family, and whether compilation pays over a 30-epoch run.

    python scripts/compile_probe.py --image-size 224 --json compile.json
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

# Run from a checkout without install; drop scripts/ from the path so scripts/evaluate.py never shadows `evaluate`.
sys.path[0] = str(Path(__file__).resolve().parents[1])

from hf_animals import catalogue, cli, compile_probe  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--families", nargs="+", default=list(catalogue.FAMILIES), choices=list(catalogue.FAMILIES))
    p.add_argument("--image-size", type=cli.positive_int, default=224)
    p.add_argument("--steps", type=cli.positive_int, default=5, help="timed steps on each side")
    p.add_argument("--batch-size", type=cli.positive_int, default=32)
    p.add_argument("--json", type=Path, help="write the figures here")
    args = p.parse_args(argv)
    results = []
    for family in args.families:
        results.append(compile_probe.probe_family(family, args.image_size, steps=args.steps,
                                                  batch_size=args.batch_size))
        print(compile_probe.format_table(results[-1:]).splitlines()[-1], flush=True)
    print(compile_probe.format_table(results))
    if args.json:
        args.json.write_text(json.dumps([r.to_json() for r in results], indent=2) + "\n")
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(cli.run_main(main))
