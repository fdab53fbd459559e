#!/usr/bin/env python
"""Do a finished study's latencies agree? Prints the batch-1 and batch-32 inference times of the runs that share a
model and an image size (the regimes change which weights trained, not the inference graph) and each group's
max/min ratio, so a reader can see how reproducible the latency column is.

    python scripts/latency_check.py --study runs/demo
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

# Run from a checkout without install; drop scripts/ from the path so scripts/evaluate.py never shadows `evaluate`.
sys.path[0] = str(Path(__file__).resolve().parents[1])

from hf_animals import cli, costs  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--study", required=True, help="study folder written by scripts/study.py")
    args = p.parse_args(argv)
    print(costs.format_latency_groups(costs.latency_groups(args.study)))
    return 0


if __name__ == "__main__":
    sys.exit(cli.run_main(main))
