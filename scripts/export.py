#!/usr/bin/env python
"""Export a finished run's model to ONNX, checked against PyTorch on the run's test images, optionally as int8.

Writes RUN/model.onnx (or --output FILE), with --int8 also FILE's .int8.onnx, and export.json beside it: the
checks, a latency table (batch 1 and 32; PyTorch fp32, ORT fp32, ORT int8; ms per image) and the file sizes.
The .onnx file carries its class names and preprocessing, so predict.py --model FILE.onnx and app.py FILE.onnx
need nothing else. An int8 model losing more than --max-drop accuracy points is refused (exit 2) unless --force.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

# Run from a checkout without install; drop scripts/ from the path so scripts/evaluate.py never shadows `evaluate`.
sys.path[0] = str(Path(__file__).resolve().parents[1])

from hf_animals import cli, export  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run", help="a finished run folder (train.py --output-dir)")
    p.add_argument("--onnx", action="store_true", required=True, help="export to ONNX (the only format so far)")
    p.add_argument("--int8", action="store_true", help="also write an int8 model (onnxruntime static quantisation)")
    p.add_argument("--output", help="the fp32 .onnx file to write (default RUN/model.onnx)")
    p.add_argument("--force", action="store_true", help="write the int8 model even if it loses too much accuracy")
    p.add_argument("--max-drop", type=float, default=export.DEFAULT_MAX_DROP,
                   help="test accuracy points int8 may lose against fp32 (default %(default)s)")
    p.add_argument("--threads", type=cli.positive_int, default=1,
                   help="CPU threads for the latency table, PyTorch and onnxruntime alike (default %(default)s)")
    p.add_argument("--data-dir", help="the image folder of the run's splits.csv, if it moved since training")
    args = p.parse_args(argv)
    result = export.export_run(args.run, output=args.output, int8=args.int8, force=args.force,
                               max_drop=args.max_drop, data_dir=args.data_dir,
                               threads=args.threads)
    print(export.format_report(result))
    export.raise_if_refused(result)
    return 0


if __name__ == "__main__":
    sys.exit(cli.run_main(main))
