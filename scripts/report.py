#!/usr/bin/env python
"""Write a study's hand-in report: STUDY/report.ipynb (executed), its jupytext twin STUDY/report.py and a
self-contained STUDY/report.html, all generated from the study's measured results.

    python scripts/report.py --study runs/demo
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

# Run from a checkout without install; drop scripts/ from the path so scripts/evaluate.py never shadows `evaluate`.
sys.path[0] = str(Path(__file__).resolve().parents[1])

from hf_animals import cli, report  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--study", required=True, help="study folder written by scripts/study.py")
    p.add_argument("--no-execute", dest="execute", action="store_false",
                   help="write the notebook without running it (no outputs; implies --no-html)")
    p.add_argument("--no-html", dest="html", action="store_false", help="skip the HTML rendering")
    args = p.parse_args(argv)
    paths = report.write_report(args.study, execute=args.execute, html=args.html and args.execute)
    for path in paths.values():
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(cli.run_main(main))
