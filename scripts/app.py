#!/usr/bin/env python
"""Serve an image classifier in the browser (Gradio): upload or paste an image, see the top-k classes.

MODEL: a run folder, local-dir:DIR, hf-hub:USER/NAME, or an .onnx file from scripts/export.py. Same preprocessing and
the same probabilities as scripts/predict.py. The page shows the run's test accuracy, regime and weights, and its
test-split images as examples when the run folder still finds them. Local only: no share link, no analytics.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

# Run from a checkout without install; drop scripts/ from the path so scripts/evaluate.py never shadows `evaluate`.
sys.path[0] = str(Path(__file__).resolve().parents[1])

from hf_animals import app, cli  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", help="run folder, local-dir:DIR, hf-hub:USER/NAME or an exported .onnx file")
    p.add_argument("--host", default=app.DEFAULT_HOST, help="address to listen on (default %(default)s)")
    p.add_argument("--port", type=cli.positive_int, default=app.DEFAULT_PORT, help="(default %(default)s)")
    p.add_argument("--tta", action="store_true", help="test-time augmentation: average with the mirror image")
    p.add_argument("--top-k", type=cli.positive_int, default=app.DEFAULT_TOP_K,
                   help="classes shown (default %(default)s)")
    args = p.parse_args(argv)
    app.launch(args.model, host=args.host, port=args.port, tta=args.tta, top_k=args.top_k)
    return 0


if __name__ == "__main__":
    sys.exit(cli.run_main(main))
